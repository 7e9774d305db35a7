"""The lock that keeps ``vxgate quarantine check --repair`` off files whose record is in memory.

While its storage fails, a daemon keeps the outcomes it cannot write in memory
(``durability.StorageGuard``): a message whose record rides on the next transaction then has
its file in the spool and no row in the database, and a repair would take that file for an
orphan and remove it, losing the mail. So each spool folder has a lock file that the daemon
holds shared from the first failure until every kept write is made, and a repair removes an
orphan only while it can hold the same lock exclusively. The lock file is created when the
daemon starts, so that taking the lock during an outage (a full disk) writes nothing; its
lock goes with the process, so a killed daemon leaves nothing held.
"""
import contextlib
import fcntl
import logging
import os

from salmon_app.storage.processlock import try_exclusive

NAME = "kept-records.lock"
LOG = logging.getLogger("vxgate")


class KeptLock:
    """The daemon's side, for one spool folder."""

    def __init__(self, directory):
        self.path = os.path.join(directory, NAME)
        self.held = False
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.fd = None
            LOG.warning("cannot open %s (%s): quarantine check --repair cannot tell when records are kept "
                        "in memory; do not repair while storage fails", self.path, exc)

    def hold(self):
        if self.fd is not None and not self.held:
            # shared, and blocking: a repair holds it only while it checks and removes one file
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            self.held = True

    def release(self):
        if self.fd is not None and self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.held = False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd, self.held = None, False


@contextlib.contextmanager
def unless_kept(directory):
    """For a repair in spool folder ``directory``: yields True while no daemon keeps records in
    memory there (and keeps it from starting to until the block ends), else False. A folder
    without the lock file has had no daemon of this version: True."""
    try:
        fd = os.open(os.path.join(directory, NAME), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True
        return
    with try_exclusive(fd) as free:
        yield free
