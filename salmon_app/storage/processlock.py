"""The write lock the processes of one daemon share on a SQLite file (``Processes`` > 1).

A ``flock`` on ``<DatabasePath>.writer``: the kernel frees it when its holder dies, even by
``kill -9``, and wakes the next waiter the moment it is free (SQLite's own busy handler sleeps
1, 2, 5... ms instead). But a blocking ``flock`` has no time-out, and a process stopped inside
a write transaction would hang every writer of every other process, where mail must get a
4xx after ``DatabaseBusyTimeout``. Polling with ``LOCK_NB`` and short sleeps cost 15% of the
throughput. So a waiter first tries ``LOCK_NB``; when the lock is held, a thread of this
process blocks in ``flock`` on its behalf while the waiter waits for it with a time-out, and
a grant nobody waits for any more is handed back at once. The caller serialises its own
threads (``models.writing``'s in-process lock): at most one waiter at a time.
"""
import contextlib
import fcntl
import os
import sqlite3
import threading


@contextlib.contextmanager
def try_exclusive(fd):
    """Yields True while this holds ``fd``'s ``flock`` exclusively, False when another process
    holds it (shared or exclusive): never waits. Closes ``fd``, which lets the lock go."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class ProcessLock:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.cond = threading.Condition()
        self.wanted = self.granted = self.blocking = self.closed = False
        self.thread = None

    def acquire(self, timeout):
        with self.cond:
            if self.closed:
                raise sqlite3.OperationalError("database is closed")
            # never while the helper blocks in flock: the same descriptor would then hold the
            # lock twice over, and the helper's hand-back would free it under our feet
            if not self.blocking:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    pass
            self.wanted = True
            try:
                self._helper()
                self.cond.notify_all()
                if self.cond.wait_for(lambda: self.granted, timeout):
                    self.granted = False
                    return
            finally:
                self.wanted = False      # a grant after this is handed back by the helper
        raise sqlite3.OperationalError("database is locked: another process of this vxgate held the write lock "
                                       "for %gs (DatabaseBusyTimeout)" % timeout)

    def release(self):
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            if self.blocking:
                return      # the helper closes the descriptor when its flock returns: closed
                            # now, its number could be reused and the helper's unlock hit that
        os.close(self.fd)

    def _helper(self):
        if self.thread is None:
            thread = threading.Thread(target=self._block, name="writer-lock", daemon=True)
            thread.start()
            self.thread = thread

    def _block(self):
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.wanted or self.closed)
                if self.closed:
                    self.thread = None
                    return
                self.blocking = True
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:         # ENOLCK and the like: waiters time out, the next one starts a helper
                with self.cond:
                    self.blocking, self.thread = False, None
                    self.cond.notify_all()
                return
            with self.cond:
                self.blocking = False
                if self.closed:
                    os.close(self.fd)       # also frees the lock just taken
                    self.thread = None
                    return
                if self.wanted:     # granted and no longer wanted, in one step under the lock
                    self.granted, self.wanted = True, False
                    self.cond.notify_all()
                else:               # the waiter gave up meanwhile
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
