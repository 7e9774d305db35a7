"""The object ``salmon start`` runs (``settings.receiver``): start everything, block, stop cleanly.

``salmon start`` calls ``receiver.start()`` in the main thread; ``salmon stop`` and systemd send
SIGTERM (SIGINT does the same). Either stops listening, answers sessions that wait, lets
workers finish and closes the database; whatever is still in flight resumes at the next
start. SIGHUP (``vxgate reload``, ``systemctl reload``; SIGUSR1 too) re-reads the
configuration file and applies what can change live (``salmon_app/reload.py``). In the foreground (``--no-daemon``) the service writes and removes the pid file itself
($VXGATE_PIDFILE, set by the ``salmon`` wrapper) and speaks systemd's notify protocol.
"""
import logging
import os
import signal
import sys
import threading
import time

from salmon_app import pidfile, sdnotify

LOG = logging.getLogger("vxgate")


def refuse_root():
    """Root only when told: the ``salmon`` wrapper switched to ``User`` or was given --allow-root."""
    if os.geteuid() == 0 and not os.environ.get("VXGATE_ALLOW_ROOT"):
        message = ("vxgate: refusing to run as root; set User in [Root] of the configuration, run as the "
                   "service user, or start with `salmon start --allow-root`")
        print(message, file=sys.stderr)
        raise SystemExit(message)


def lock_state(path):
    """Hold an exclusive lock on ``path`` (next to the database) for the life of the process,
    so a second vxgate on the same spool and database stops before its recovery touches them."""
    import fcntl
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _written_pid(fd)
        os.close(fd)
        raise RuntimeError("another vxgate (pid %s) uses this spool and database (lock %s); "
                           "stop it first, or give this one its own SpoolDir and DatabasePath" % (holder, path))
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def state_lock(config):
    """The daemon's state lock: one daemon per spool, beside the SQLite file, or in the spool
    when the database is given by DatabaseUrl (shared, or a node's own)."""
    beside, in_spool = state_locks(config.DatabasePath, config.SpoolDir)
    return in_spool if config.DatabaseUrl else beside


def state_locks(database_path, spool_dir):
    """Both places a daemon on this SQLite file and spool may lock: (beside DatabasePath, in
    the spool, as with DatabaseUrl = sqlite:///...)."""
    return database_path + ".lock", os.path.join(spool_dir, "vxgate.lock")


def lock_holder(path):
    """The pid written in the state lock ``path`` while a daemon holds it ("?" if unreadable),
    or None: no file, or nobody holds it."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _written_pid(fd)
    finally:
        os.close(fd)


def _written_pid(fd):
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"


class Service:
    def __init__(self, build, lock=None, load=None, pid_path=None, announce=None, core=None):
        self.build = build          # returns the gateway (or processes.ProcessSet); called at start so errors surface there
        self.core = core            # keeps the daemon on a CPU core before its threads start (PinProcesses)
        self.announce = announce    # called with the started gateway before READY=1 (a process of several)
        self.lock = lock            # path of the state lock (config/boot.py: DatabasePath + ".lock")
        self.load = load            # re-reads the configuration file (reload)
        self.pid_path = pid_path    # the reload outcome is written beside it
        self.gateway = None
        self.stopped = threading.Event()
        self.reload_asked = threading.Event()
        self.pidfile = None

    def start(self, block=True):
        refuse_root()
        sdnotify.notify("MAINPID=%d" % os.getpid(), "STATUS=starting: recovery, then the listeners")
        if block and os.environ.get("VXGATE_PIDFILE"):
            self.pidfile = os.environ["VXGATE_PIDFILE"]
            pidfile.claim(self.pidfile)
        if threading.current_thread() is threading.main_thread():
            # before the (long) start: SIGHUP's default action would end the process, and with
            # Processes > 1 the master's start lasts until every process has recovered
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._signal)
            for signum in (signal.SIGHUP, signal.SIGUSR1):
                signal.signal(signum, self._reload)
        if block and self.core:
            self.core()
        try:
            if self.lock:
                self.lock_fd = lock_state(self.lock)
            self.gateway = self.build()
            self.gateway.start()
            if self.announce:
                self.announce(self.gateway)
        except BaseException as exc:
            sdnotify.notify("STATUS=start-up failed: %s" % exc)
            self._release_pidfile()
            raise
        listening = ", ".join(str(s.address) for s in self.gateway.servers)
        LOG.info("vxgate started: %s", listening)
        sdnotify.notify("READY=1", "MAINPID=%d" % os.getpid(), "STATUS=listening on %s" % listening)
        if block:
            ping, last = sdnotify.watchdog_interval(), time.monotonic()
            while not self.stopped.wait(0.5):
                if self.reload_asked.is_set():
                    self.reload_asked.clear()
                    self.reload()
                if ping and time.monotonic() - last >= ping:
                    sdnotify.notify("WATCHDOG=1")
                    last = time.monotonic()
            self._shut_down()

    def _signal(self, signum, frame):
        LOG.info("signal %s received: shutting down", signal.Signals(signum).name)
        self.stopped.set()

    def _reload(self, signum, frame):
        # the work is done by the main loop: a signal handler must not take the locks it may hold
        LOG.info("signal %s received: reloading the configuration", signal.Signals(signum).name)
        self.reload_asked.set()

    def reload(self):
        from salmon_app import reload
        if self.gateway is None or self.load is None:
            return None
        sdnotify.notify("RELOADING=1", "STATUS=reloading the configuration")
        outcome = reload.reload_daemon(self.gateway, self.load)
        reload.write_result(self.pid_path, outcome)
        sdnotify.notify("READY=1", "STATUS=%s" % ("configuration reloaded" if outcome["ok"] else
                                                  "reload refused: " + outcome["error"]))
        return outcome

    def stop(self):
        """Stop a service started with block=False (tests)."""
        self.stopped.set()
        self._shut_down()

    def _shut_down(self):
        if self.gateway is not None:
            sdnotify.notify("STOPPING=1", "STATUS=finishing the work in hand")
            self.gateway.shut_down()
            self.gateway = None
            LOG.info("vxgate stopped")
        self._release_pidfile()

    def _release_pidfile(self):
        if self.pidfile:
            pidfile.release(self.pidfile)
            self.pidfile = None
