"""Messages vxgate writes itself (notices, reports, bounces, digests): stored, recorded, then relayed.

``store_own`` writes the message durably to the spool and records it as ``relaying`` and
already answered, the state the daemon's sweeper hands to the relay stage within a second.
The daemon calls it through ``Gateway.inject`` (which also submits at once); the web console,
a process of its own, calls it directly for the mail it sends recipients, and the running
daemon relays that like any notice, with its retries and its history.
"""
import json
import secrets
import time

from salmon_app.storage import models
from salmon_app.storage.models import Message, Recipient


def new_queue_id():
    return secrets.token_hex(8).upper()


def store_own(spool, mode, mail_from, rcpt_to, data, *, parent=None, subject="", node=""):
    """Store and record one message of vxgate's own; returns its queue id. ``node`` is the node
    whose spool holds it: that node's daemon relays it."""
    queue_id = new_queue_id()
    spool.store(queue_id, data)
    now = time.time()
    with models.writing():
        Message.create(id=queue_id, node=node, mode=mode, state=models.RELAYING, answered=True, created=now,
                       updated=now, mail_from=mail_from, rcpt_json=json.dumps(rcpt_to), size=len(data),
                       sha256="", subject=subject, parent=parent)
        Recipient.insert_many([{"message": queue_id, "address": a} for a in rcpt_to]).execute()
        models.log_event(queue_id, "created", "%s about %s to %s" % (mode, parent, ", ".join(rcpt_to)))
    return queue_id
