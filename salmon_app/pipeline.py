"""Go-style plumbing: stages (a bounded queue drained by a pool of threads), waiters, tracking.

A stage never blocks its producer: ``submit`` gives up when the queue is full and the message
simply stays in the database, where the sweeper finds it again. So a slow stage (vxCube,
a dead next hop) can fill its own queue but cannot stall the stages before it. The tracker
knows which messages are owned by a queue or a worker, so the sweeper never doubles them.
"""
import logging
import queue
import threading

LOG = logging.getLogger("vxgate.pipeline")
_STOP = object()


class Stage:
    def __init__(self, name, workers, size, handle, prepare=None):
        self.name, self.workers, self.handle = name, workers, handle
        self.prepare = prepare         # run once in each worker thread before its first item
        # queue.SimpleQueue and a size check under a lock: Queue's Python-level Conditions cost
        # more CPU per hand-over than the rest of it (a stage's producer never waits anyway)
        self.queue, self.size = queue.SimpleQueue(), size
        self._put_lock = threading.Lock()
        self.threads = []
        self.busy = 0                  # workers inside a step (read by /metrics)
        self._busy_lock = threading.Lock()

    def start(self):
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name="%s-%d" % (self.name, number), daemon=True)
            thread.start()
            self.threads.append(thread)

    def submit(self, item):
        """Queue ``item``; False when the queue is full (the item waits in the database)."""
        with self._put_lock:
            if self.queue.qsize() >= self.size:
                return False
            self.queue.put(item)
        return True

    def _work(self):
        if self.prepare is not None:
            try:
                self.prepare()
            except Exception:   # the first item meets the same problem and reports it per message
                LOG.exception("%s: worker preparation failed", self.name)
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            with self._busy_lock:
                self.busy += 1
            try:
                self.handle(item)
            except Exception:   # the handler reports per message; this only keeps the pool alive
                LOG.exception("%s: worker error on %r", self.name, item)
            finally:
                with self._busy_lock:
                    self.busy -= 1

    def stop(self, timeout=30.0):
        """Let workers finish what they hold; what is still queued stays in the database."""
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        for _ in self.threads:
            self.queue.put(_STOP)
        for thread in self.threads:
            thread.join(timeout)
        self.threads = []

    def backlog(self):
        return self.queue.qsize()


class Waiter:
    """The SMTP session waiting for a message's outcome; ``offer`` fails once it gave up."""

    def __init__(self):
        # a lock held until the reply is there: cheaper to wait on than an Event (a Condition)
        self._signal = threading.Lock()
        self._signal.acquire()
        self._signalled = False
        self._set_lock = threading.Lock()     # not _lock: wake() must not wait for an offer's before()
        self._lock = threading.Lock()
        self.reply = None
        self.closed = False
        self.woken = False
        self.answering = False      # the session tried an early 250 (it may be recorded)
        self.unsynced = False       # the reply is a delivery whose records need no fsync first

    def offer(self, reply, before=None):
        """Hand ``reply`` to the session; ``before()`` runs first, under the lock, only if it will be sent."""
        with self._lock:
            if self.closed:
                return False
            if before:
                before()
            self.reply = reply
            self.closed = True
            self._set()
        return True

    def wake(self):
        """Stop waiting now (shutdown): the session takes over the message as on a time-out."""
        self.woken = True
        self._set()

    def _set(self):
        # released once, so that every later wait returns at once
        with self._set_lock:
            if not self._signalled:
                self._signalled = True
                self._signal.release()

    def wait(self, timeout, on_timeout=None):
        """The reply, or None after ``timeout``; ``on_timeout()`` runs under the lock before giving up.
        An ``on_timeout()`` that returns False keeps the waiter open: the session may wait again."""
        if self._signal.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            self._signal.release()
        with self._lock:
            if self.reply is None and not self.closed:
                if on_timeout and on_timeout() is False:
                    return None
                self.closed = True
            return self.reply

    def abandon(self):
        """Close without a reply; False if a reply was handed over first."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            return True


class Registry:
    """Thread-safe maps of the waiting sessions and of the messages the pipeline holds."""

    def __init__(self):
        self._lock = threading.Lock()
        self.waiters = {}
        self.held = set()
        self.again = set()     # asked for while held: run once more when released

    def add_waiter(self, queue_id):
        waiter = Waiter()
        with self._lock:
            self.waiters[queue_id] = waiter
        return waiter

    def waiter(self, queue_id):
        with self._lock:
            return self.waiters.get(queue_id)

    def drop_waiter(self, queue_id):
        with self._lock:
            self.waiters.pop(queue_id, None)

    def hold(self, queue_id):
        """Claim a message for the pipeline; False if it is already held (it then runs once
        more when released: news that arrives during a step, such as finished analyses, is
        never lost)."""
        with self._lock:
            if queue_id in self.held:
                self.again.add(queue_id)
                return False
            self.held.add(queue_id)
            return True

    def release(self, queue_id):
        """Give a message up; True if it was asked for meanwhile and should run again."""
        with self._lock:
            self.held.discard(queue_id)
            if queue_id in self.again:
                self.again.discard(queue_id)
                return True
            return False

    def is_held(self, queue_id):
        with self._lock:
            return queue_id in self.held

    def open_waiters(self):
        with self._lock:
            return list(self.waiters.items())
