"""Removing messages: their records in one short transaction, then their files.

For each batch of ids (500 at most, so the daemon never waits long for the write lock), the
rows of ``Message``, ``Recipient``, ``Event``, ``FileCheck`` and ``Release`` go in a single
transaction that also re-reads each message's state, so a message in flight is never removed
unless asked (``allow_in_flight``). Only after the commit are the files (the ``.eml`` and any
``.out`` modified copy) unlinked: a crash in between leaves a file without a record, which
``check --repair`` (and the daemon's start-up) remove, never a record pointing at half a message.
"""
import dataclasses
import logging
import os

from salmon_app.storage import models
from salmon_app.storage.models import Body, Event, FileCheck, Message, Recipient, Release

BATCH = 500
LOG = logging.getLogger("vxgate")


@dataclasses.dataclass
class Removed:
    queue_id: str
    state: str
    size: int
    files: int          # files unlinked (0, 1 or 2)


def remove_messages(store, ids, *, allow_in_flight=False, batch=BATCH, user=None):
    """Remove the messages ``ids``; returns (removed: [Removed], skipped: {id: state or None}).

    With ``user`` (the web console), each removal is logged with who did it: the message's
    history goes with it."""
    removed, skipped = [], {}
    ids = list(dict.fromkeys(ids))
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        with models.writing():
            rows = list(Message.select(Message.id, Message.state, Message.size, Message.node)
                        .where(Message.id.in_(chunk)))
            found = {r.id for r in rows}
            skipped.update({queue_id: None for queue_id in chunk if queue_id not in found})
            doomed = []
            for r in rows:
                if r.state in models.OWNED and not allow_in_flight:
                    skipped[r.id] = r.state
                else:
                    doomed.append(r)
            doomed_ids = [r.id for r in doomed]
            if doomed_ids:
                for model, column in ((Recipient, Recipient.message), (Event, Event.message),
                                      (FileCheck, FileCheck.message), (Release, Release.message),
                                      (Body, Body.message)):
                    model.delete().where(column.in_(doomed_ids)).execute()
                Message.delete().where(Message.id.in_(doomed_ids)).execute()
        for r in doomed:
            # another node's file stays until that node's next start-up finds it without a record
            removed.append(Removed(r.id, r.state, r.size, remove_files(store, r.id) if store.local(r) else 0))
            if user:
                LOG.info("%s: deleted (%s) by %s", r.id, r.state, user)
    return removed, skipped


def remove_files(store, queue_id):
    """Unlink a message's file and modified copy; returns how many were there."""
    count = 0
    for path in (store.file_path(queue_id), store.modified_path(queue_id)):
        try:
            os.unlink(path)
            count += 1
        except FileNotFoundError:
            pass
    return count
