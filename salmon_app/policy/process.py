"""``HookProcess``: a worker's hook runtime in a child process, killed when it overruns.

The Lua time limit is checked between instructions, so a single C call that loops without
executing any (``table.move({}, 1, 4e8, 1, {})``, ``string.rep``, a quadratic ``gsub``) runs on
past it, and Python code a hook calls holds the GIL of its whole process. The daemon therefore
runs each check worker's ``HookRuntime`` in a child process of its own: the worker sends the
message and waits at most ``time_limit + SLACK`` for the Decision; past that it SIGKILLs the
child, answers the hook failure (a late result is never read) and starts a replacement at
once, which loads the last version of the hook that loaded while the worker goes on. A child
is a fresh interpreter (``python -m salmon_app.policy.process``), not a fork of the threaded
daemon, and dies with it. Messages are pickled over its stdin and stdout. The interface is
the one of ``HookRuntime``: ``run``, ``reload``, ``source``, plus ``close``.
"""
import ctypes
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from salmon_app import affinity

from . import runtime
from .result import HookError

log = logging.getLogger("vxgate.policy")

SLACK = 0.5          # seconds past the time limit before the child is killed (IPC, a busy box)
START_TIME = 30.0    # a first start under load: a new interpreter imports lupa and RE2
RESTART_TIME = 5.0   # a replacement: the same, on a machine that is usually not busy then
PR_SET_PDEATHSIG = 1


class _Forward(logging.Handler):
    """Hands the child's log records to the worker, which logs them as its own."""

    def __init__(self, conn):
        super().__init__(logging.DEBUG)
        self.conn = conn

    def emit(self, record):
        try:
            self.conn.send(("log", record.name, record.levelno, record.getMessage()))
        except Exception:   # noqa: BLE001 - a lost log line must not fail the hook
            self.handleError(record)


def _serve(receive, send):
    """The child: load the hook, then answer ("run", ...) and ("reload",) until EOF."""
    # Ctrl-C and the daemon's reload signals are for the daemon, which stops us itself.
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(number, signal.SIG_IGN)
    logging.getLogger().handlers[:] = [_Forward(send)]
    logging.getLogger().setLevel(logging.DEBUG)   # the worker applies its own levels
    try:
        spec, options, source = receive.recv()
    except (EOFError, OSError):
        return
    try:
        hook = runtime.HookRuntime(spec, source=source, **options)
    except HookError as exc:
        send.send(("failed", str(exc)))
        return
    sent = hook.source
    send.send(("ready", sent))
    while True:
        try:
            request = receive.recv()
        except (EOFError, OSError):   # the worker is gone
            return
        value = hook.run(*request[1:]) if request[0] == "run" else hook.reload()
        send.send(("done", value, None if hook.source is sent else hook.source))
        sent = hook.source


def _child_main():
    # The channel takes stdout's place; stdout itself goes to stderr, so that nothing
    # printed by a library can corrupt the protocol.
    channel = os.dup(1)
    os.dup2(2, 1)
    # A child stuck in a C call must not outlive a daemon that was killed. (The signal
    # follows the thread that started the child: a check worker, which lives as long.)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(sys.argv[1]):   # the daemon died before that took effect
        return
    _serve(Connection(0, writable=False), Connection(channel, readable=False))


class HookProcess:
    def __init__(self, hook_spec, memory_limit=64 * 2**20, time_limit=5.0, on_error="tempfail",
                 list_dir=None, source=None):
        runtime.check_limits(memory_limit, time_limit, on_error)
        self.path = None if runtime.is_source(hook_spec) else os.path.abspath(hook_spec)
        self.time_limit, self.on_error = time_limit, on_error
        self._spec = hook_spec
        self._options = dict(memory_limit=memory_limit, time_limit=time_limit,
                             on_error=on_error, list_dir=list_dir)
        self._source, self._child, self._ready, self._closed = source, None, False, False
        self._send = self._conn = self._answers = None
        self._lock = threading.Lock()
        self._start()
        self._await_ready(START_TIME + time_limit)

    @property
    def source(self):
        """The code in force in the child (bytes), as it last reported."""
        return self._source

    # --- the child ------------------------------------------------------------------------

    def _start(self):
        with self._lock:
            if self._closed:    # close() came first (shut-down): no child to leave behind
                return
            child = subprocess.Popen(
                [sys.executable, "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, close_fds=True)
            affinity.release(child.pid)     # the daemon keeps to one core (PinProcesses); its hook may use any
            send = Connection(os.dup(child.stdin.fileno()), readable=False)
            conn = Connection(os.dup(child.stdout.fileno()), writable=False)
            child.stdin.close()
            child.stdout.close()
            # one poll object for the child's life: Connection.poll() builds a selector per call
            answers = select.poll()
            answers.register(conn.fileno(), select.POLLIN)
            self._child, self._send, self._conn, self._answers = child, send, conn, answers
            self._ready = False
        try:
            send.send((self._spec, self._options, self._source))
        except OSError:   # it died at once (or close() came): _await_ready reports that
            pass

    def close(self):
        """Stop the child for good (the worker or the daemon is going away)."""
        with self._lock:
            self._closed = True
        self._stop()

    def _stop(self):
        # the daemon's shut-down may close() while the worker stops a child that overran:
        # one of them takes the child, the other finds nothing left to stop
        with self._lock:
            child, send, conn = self._child, self._send, self._conn
            self._child = self._conn = self._send = self._answers = None
        if child is None:
            return
        child.kill()
        child.wait()
        send.close()
        conn.close()

    def _restart(self):
        self._stop()
        self._start()

    def _receive(self, deadline):
        """The child's next answer, logging what it logs meanwhile; None at the deadline or
        when the child is gone."""
        conn, answers = self._conn, self._answers    # close() may clear them meanwhile (shut-down)
        if conn is None:
            return None
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not answers.poll(math.ceil(left * 1000)):
                    return None
                message = conn.recv()
            except (EOFError, OSError):
                return None
            if message[0] != "log":
                return message
            logger = logging.getLogger(message[1])
            if logger.isEnabledFor(message[2]):
                logger.log(message[2], "%s", message[3])

    def _await_ready(self, wait):
        if self._ready:
            return
        answer = self._receive(time.monotonic() + wait)
        if answer is None or answer[0] != "ready":
            reason = answer[1] if answer else "the hook process did not start within %gs" % wait
            self._stop()
            raise HookError(reason)
        self._source, self._ready = answer[1], True

    def _call(self, request):
        """("done", value, source) of the child for one request, or (None, why) after
        stopping a child that did not answer within the limit."""
        try:
            if self._closed:
                raise HookError("vxgate is shutting down")
            if self._child is None:
                self._start()
            self._await_ready(RESTART_TIME + self.time_limit)
        except HookError as exc:
            return None, str(exc)
        deadline = time.monotonic() + self.time_limit + SLACK
        child, send = self._child, self._send        # close() may clear them meanwhile (shut-down)
        try:
            if send is None:
                raise OSError("closed")
            send.send(request)
        except (OSError, ValueError):
            answer = None
        else:
            answer = self._receive(deadline)
        if answer is None:
            why = "time limit exceeded" if time.monotonic() >= deadline else \
                "vxgate is shutting down" if self._closed else \
                "the hook process ended (exit code %s)" % (child.poll() if child else None)
            self._restart()   # the replacement loads the hook while this worker goes on
            return None, why
        if answer[2] is not None:
            self._source = answer[2]
        return answer[1], None

    # --- HookRuntime's interface ----------------------------------------------------------

    def run(self, envelope, raw, analysis):
        """The Decision for one message; the configured failure when the child overran."""
        decision, why = self._call(("run", envelope, raw, analysis))
        if why is not None:
            return runtime.failure(envelope.queue_id, self.on_error, why)
        return decision

    def reload(self):
        replaced, why = self._call(("reload",))
        if why is not None:
            log.error("hook %s not reloaded: %s", self.path or "(inline)", why)
            return False
        return replaced


if __name__ == "__main__":
    _child_main()
