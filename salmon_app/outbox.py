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


FOLDER_SECONDS = 4      # how long new messages share one spool folder (the id's first two digits)


def new_queue_id(now=None):
    """16 hexadecimal digits: two that name the spool folder, turning every FOLDER_SECONDS
    through all 256, then 56 random bits (the id cannot be guessed).

    Messages received together then share a folder, so one folder fsync makes all of their
    renames durable (``storage/groupsync.py``), and their records sit side by side in the
    indexes keyed by queue id: with a random first digit every message had a folder fsync and
    index pages of its own."""
    turn = int((time.time() if now is None else now) // FOLDER_SECONDS) % 256
    return "%02X%s" % (turn, secrets.token_hex(7).upper())


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
