"""The SQLite writers' lock of a daemon's processes (storage/processlock.py): a flock with a
time-out. The other process is a second open file description of the same file (flock locks
of two descriptions exclude each other even in one process)."""
import fcntl
import os
import sqlite3
import threading
import time

import pytest

from support.waiting import wait_until

from salmon_app.storage.processlock import ProcessLock


@pytest.fixture
def lock(tmp_path):
    path = str(tmp_path / "q.db.writer")
    ours = ProcessLock(path)
    other = os.open(path, os.O_RDWR)
    yield ours, other
    if not ours.closed:
        ours.close()
    os.close(other)


def held_by(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def test_free_lock_is_taken_at_once_and_excludes_the_other_process(lock):
    ours, other = lock
    ours.acquire(1.0)
    assert not held_by(other)
    ours.release()
    assert held_by(other)


def test_a_held_lock_is_waited_for_and_granted_when_freed(lock):
    ours, other = lock
    fcntl.flock(other, fcntl.LOCK_EX)
    threading.Timer(0.2, fcntl.flock, (other, fcntl.LOCK_UN)).start()
    started = time.monotonic()
    ours.acquire(5.0)
    assert 0.15 < time.monotonic() - started < 2.0
    assert not held_by(other)        # granted: this process holds it now
    ours.release()


def test_a_lock_held_too_long_raises_sqlites_busy_error_and_a_late_grant_is_handed_back(lock):
    ours, other = lock
    fcntl.flock(other, fcntl.LOCK_EX)     # as a process stopped inside a write transaction
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        ours.acquire(0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    fcntl.flock(other, fcntl.LOCK_UN)
    # the helper got it for a waiter that had given up: it must give it back
    wait_until(lambda: held_by(other), 5, "the abandoned grant handed back")
    fcntl.flock(other, fcntl.LOCK_EX)
    threading.Timer(0.2, fcntl.flock, (other, fcntl.LOCK_UN)).start()
    ours.acquire(5.0)                      # the next writer waits through the helper, and gets it
    assert not held_by(other)
    ours.release()


def test_closing_while_the_helper_waits_leaves_the_next_lock_alone(tmp_path, lock):
    ours, other = lock
    fcntl.flock(other, fcntl.LOCK_EX)
    with pytest.raises(sqlite3.OperationalError):
        ours.acquire(0.2)             # the helper now blocks in flock on our descriptor
    ours.close()
    reopened = ProcessLock(str(tmp_path / "q.db.writer2"))       # may get the same fd number
    reopened.acquire(1.0)
    fcntl.flock(other, fcntl.LOCK_UN)      # the old helper's flock returns now
    wait_until(lambda: ours.thread is None, 5, "the old helper to end")
    probe = os.open(str(tmp_path / "q.db.writer2"), os.O_RDWR)
    try:
        assert not held_by(probe)          # the new lock is still ours
    finally:
        os.close(probe)
        reopened.release()
        reopened.close()
    assert held_by(other)                 # and the old one was freed with its descriptor
