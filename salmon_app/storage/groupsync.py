"""Group fsync: one fsync makes the writes of every thread that asked before it durable.

A thread that wrote something (a SQLite commit to the WAL without its own fsync, a rename in
a spool folder) takes a ticket, then ``wait(ticket)`` returns once an fsync that *started*
after the ticket was taken has finished. The first waiter with no fsync running does it for
everyone whose ticket is covered (it reads the newest ticket before it starts); the others
sleep and are woken when it ends. This is how PostgreSQL and InnoDB flush their logs: under
load, ten sessions share one fsync instead of queueing for ten. A failed fsync raises in the
thread that ran it; the waiters it covered retry it themselves, so each meets the error.
"""
import os
import threading


class GroupSync:
    def __init__(self, sync):
        self._sync = sync               # the fsync itself (a callable)
        self._cond = threading.Condition(threading.Lock())
        self._asked = 0                 # newest ticket
        self._done = 0                  # every ticket up to this one is durable
        self._running = False

    def ticket(self):
        """Call after the write (its bytes are in the kernel): its turn for durability."""
        with self._cond:
            self._asked += 1
            return self._asked

    def wait(self, ticket):
        """Return once the write of ``ticket`` is on disk (OSError if the fsync failed)."""
        with self._cond:
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running, target = True, self._asked
                self._cond.release()
                ok = False
                try:
                    self._sync()
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._done = max(self._done, target)
                    self._cond.notify_all()

    def sync(self):
        """ticket() and wait() at once: for a write just made."""
        self.wait(self.ticket())


def fsync_path(path, fallback=None, sync=os.fsync):
    """fsync a file or folder by name (``fallback`` if ``path`` does not exist); ``sync`` may be
    os.fdatasync for a file whose metadata need not be durable (SQLite's own choice)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if fallback is None:
            raise
        fd = os.open(fallback, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


class FolderSyncs:
    """One GroupSync per folder: the directory fsyncs after renames, batched per folder."""

    def __init__(self):
        self._lock = threading.Lock()
        self._folders = {}

    def sync(self, folder):
        with self._lock:
            group = self._folders.get(folder)
            if group is None:
                group = self._folders[folder] = GroupSync(lambda: fsync_path(folder))
        group.sync()
