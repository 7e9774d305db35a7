"""Storage health and outcomes already decided: never relay twice because a record failed.

Once the next hop has accepted a message (or a session has been given its final reply), that
outcome is a fact. If recording it fails (disk full, database locked past its busy time-out),
the write is kept here, in memory, and retried by the sweeper; the message stays held, so no
stage runs it again and it is never relayed a second time. While any write fails, storage is
"failing": new mail is refused with 451 at MAIL FROM, the sweeper relays nothing, and a small
probe (a database row and a spool file, both fsynced) tells when space or the lock is back.
Only a crash inside that window can repeat a delivery (once, at the next start-up).
"""
import collections
import errno
import logging
import os
import threading
import time

from salmon_app.log import qlog
from salmon_app.storage import engine, models
from salmon_app.storage.keptlock import KeptLock

LOG = logging.getLogger("vxgate.storage")
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def is_storage_error(exc):
    """A full disk, a read-only or failing file system, a database held by another process or
    out of reach: a fault of the place vxgate writes to, not of the message (a missing file is not one)."""
    if isinstance(exc, OSError) and not isinstance(exc, _DATABASE_ERRORS):
        return exc.errno in _DISK_ERRNOS
    return isinstance(exc, _DATABASE_ERRORS)


_DATABASE_ERRORS = engine.storage_errors()


CONFLICT_RETRIES = 3


class StorageGuard:
    def __init__(self, spool, registry):
        self.spool, self.registry = spool, registry
        self._lock = threading.Lock()
        self.pending = collections.OrderedDict()    # queue id -> [writes still to make]
        self.failing = ""                           # why storage cannot be written, or ""
        self.since = 0.0
        self.kept = KeptLock(spool.directory)       # held from a failure until nothing is kept

    # ------------------------------------------------------------ writing
    def write(self, queue_id, write, *, settled):
        """Run ``write()``; when storage fails and the outcome is ``settled`` (already a fact),
        keep the write for later and return False; otherwise the error propagates."""
        with self._lock:
            waiting = queue_id in self.pending
            if waiting:                      # keep the order of a message's records
                self.pending[queue_id].append(write)
        if waiting:
            return False
        try:
            for attempt in range(CONFLICT_RETRIES):
                try:
                    write()
                    break
                except Exception as exc:
                    # PostgreSQL rolled this transaction back to settle a deadlock: the
                    # database works, and the write (a whole transaction) can simply run again
                    if not engine.is_conflict(exc) or attempt == CONFLICT_RETRIES - 1:
                        raise
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            self.failed(exc)
            if not settled:
                raise
            with self._lock:
                self.pending.setdefault(queue_id, []).append(write)
            qlog(queue_id, LOG).error("outcome kept in memory until storage works again "
                                      "(it is never relayed again): %s", exc)
            return False
        return True

    def holds(self, queue_id):
        with self._lock:
            return queue_id in self.pending

    # ------------------------------------------------------------ health
    def failed(self, exc):
        with self._lock:
            # before any outcome is kept in memory: a repair must not take its file for an
            # orphan (a repair holds the lock for one file at a time: a short wait at most)
            self.kept.hold()
            first = not self.failing
            self.failing = "%s: %s" % (type(exc).__name__, exc)
            if first:
                self.since = time.time()
        if first:
            LOG.error("storage failing (%s); refusing new mail with 451 and relaying nothing "
                      "until the spool and database can be written again", self.failing)

    def refusal(self):
        """The reply for new mail while storage fails, else None."""
        from salmon_app.receiver import Reply
        if self.failing:
            return Reply(451, "4.3.0 vxgate cannot store mail right now, try again later")
        return None

    def retry(self):
        """Once a sweeper round: make the kept writes, or probe; True when storage works."""
        with self._lock:
            queued = list(self.pending.items())
        for queue_id, writes in queued:
            while writes:
                try:
                    writes[0]()
                except Exception as exc:
                    if is_storage_error(exc):
                        self.failed(exc)
                        return False
                    qlog(queue_id, LOG).exception("a kept record cannot be written; dropped")
                writes.pop(0)
            with self._lock:
                if not writes:
                    del self.pending[queue_id]
            self.registry.release(queue_id)
            qlog(queue_id, LOG).info("kept outcome recorded")
        if self.failing:
            try:
                self.probe()
            except Exception as exc:
                self.failed(exc)
                return False
            with self._lock:
                was, self.failing = self.failing, ""
            LOG.warning("storage works again after %.0fs (%s); accepting mail", time.time() - self.since, was)
        with self._lock:
            if not self.pending and not self.failing:
                self.kept.release()
        return True

    def close(self):
        self.kept.close()

    def probe(self):
        """A real durable write to both stores: a row committed, a small file fsynced."""
        models.probe()
        path = os.path.join(self.spool.tmp, "probe-%s" % os.urandom(4).hex())
        try:
            with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as handle:
                handle.write(b"\0" * 65536)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
