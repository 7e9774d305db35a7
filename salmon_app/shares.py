"""Even shares of one listening socket among the processes of a daemon (``Processes`` > 1).

Every process waits on the same listening socket, and a new connection wakes them all: the
first to call accept() gets it. Postfix keeps its connections to a content filter open for
many messages, so the process that wins a connection keeps its whole stream; left to chance,
two processes were seen holding 2 and 8 of 10 connections, one saturated while the other
idled (a quarter less mail per second). So the processes tell each other how many sessions
each holds, in a small shared memory file the master creates (a memfd every process maps),
and one that holds more than the least busy waits a moment before it accepts: the least busy
takes the connection. If it does not (its accept thread is slow to run, it is stopping), the
others take it after that wait, so no connection waits for one process.
"""
import mmap
import os
import threading

GONE = -1           # a slot whose process is not running: no share is kept for it
STEP = 0.002        # seconds of head start per session above the least busy process
MOST = 0.020


def create(count):
    """The master's shared file of ``count`` slots, all GONE; returns its descriptor."""
    fd = os.memfd_create("vxgate-shares", os.MFD_CLOEXEC)
    os.ftruncate(fd, 8 * count)
    table = Shares(fd, None, count)
    for slot in range(count):
        table.mark_gone(slot)
    table.close()
    return fd


class Shares:
    def __init__(self, fd, slot, count):
        self.slot, self.count = slot, count
        self._map = mmap.mmap(fd, 8 * count)
        self._counts = memoryview(self._map).cast("q")
        self._lock = threading.Lock()
        self._mine = 0
        self._left = False

    def open(self):
        """This process accepts from now on (its accept loop started)."""
        with self._lock:
            self._counts[self.slot] = self._mine

    def leave(self):
        """This process accepts no more (stopping)."""
        with self._lock:
            self._left = True
            self.mark_gone(self.slot)

    def change(self, delta):
        """This process opened (+1) or ended (-1) a session."""
        with self._lock:
            self._mine += delta
            if not self._left:      # a stopping process's sessions end after it left
                self._counts[self.slot] = self._mine

    def head_start(self):
        """How long this process leaves a new connection to the least busy one (seconds)."""
        running = [n for n in self._counts if n != GONE]
        least = min(running) if running else self._mine
        return min(MOST, (self._mine - least) * STEP)

    def mark_gone(self, slot):
        """(The master) the process of ``slot`` ended: its sessions are gone with it."""
        self._counts[slot] = GONE

    def close(self):
        self._counts.release()
        self._map.close()
