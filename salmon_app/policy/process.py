"""``HookProcess``: a hook runtime in a child process, killed when it overruns.

The Lua time limit is checked between instructions, so a single C call that loops without
executing any (``table.move({}, 1, 4e8, 1, {})``, ``string.rep``, a quadratic ``gsub``) runs on
past it, and Python code a hook calls holds the GIL of its whole process. The daemon therefore
runs each ``HookRuntime`` in a child process of its own, one for each check worker (a pool:
``checks.py``): the worker holding it sends the message and waits at most
``time_limit + SLACK`` for the Decision; past that it SIGKILLs the child, answers the hook
failure (a late result is never read) and starts a replacement at once, which loads the last
version of the hook that loaded while the worker goes on. A child
is a fresh interpreter (``python -m salmon_app.policy.process``), not a fork of the threaded
daemon, and dies with it. Messages are pickled over a socketpair, the child's end as its
stdin, as tuples of plain values (``_request``, ``_answer``): pickling the Envelope and the
Decision as objects took five times as long on each side, a call to a class per object. The
interface is the one of ``HookRuntime``: ``run``, ``reload``, ``source``, plus ``close``.
"""
import ctypes
import dataclasses
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from salmon_app import affinity

from . import runtime
from .context import Envelope, MessageFile
from .result import Decision, HookError

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


_HEADER = struct.Struct("!I")
_DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(Decision))


def _request(envelope, raw, analysis):
    """("run", ...) for the child: the envelope's fields, and the message's path (a file) or bytes."""
    return ("run", envelope.mail_from, envelope.rcpt_to, envelope.helo, envelope.client, envelope.queue_id,
            raw.path if isinstance(raw, MessageFile) else raw, analysis)


def _run_args(request):
    """The arguments of ``HookRuntime.run`` from a ``_request``."""
    _, mail_from, rcpt_to, helo, client, queue_id, raw, analysis = request
    return (Envelope(mail_from, rcpt_to, helo, client, queue_id),
            MessageFile(raw) if isinstance(raw, str) else raw, analysis)


def _answer(value):
    """A Decision as the tuple of its fields (anything else, a reload's answer, as it is)."""
    if isinstance(value, Decision):
        return tuple(getattr(value, name) for name in _DECISION_FIELDS)
    return value


class _Channel:
    """Pickled messages over one end of a socketpair, each with its length first.

    multiprocessing's Connection over pipes reads a message in two system calls and needs a
    poll before them for a time-out: four calls per hook call in the worker, each a chance for
    another thread to take the interpreter lock. Here a message usually takes one ``recv``
    and the time-out is the socket's own (SO_RCVTIMEO): a send and a recv per hook call
    (2.5% more mail per second at 4 KB)."""

    TOLERANCE = 0.05

    def __init__(self, sock):
        self.sock = sock
        self._buffer = bytearray()
        self._timeout = None

    def _set_timeout(self, seconds, kept):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000)))
        self._timeout = kept

    def close(self):
        self.sock.close()

    def send(self, obj):
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(_HEADER.pack(len(data)) + data)

    def recv(self, timeout=None):
        """The next message; TimeoutError after ``timeout`` seconds (None: wait), EOFError at the end.

        The socket keeps the last time-out set: one within TOLERANCE above the one asked for is
        kept (a worker asks for a little less each call), which saves a system call per call."""
        if timeout is None:
            if self._timeout is not None:
                self._set_timeout(0, None)
        elif self._timeout is None or not timeout <= self._timeout <= timeout + self.TOLERANCE:
            timeout = max(timeout, 0.001)
            self._set_timeout(timeout, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        buffer, first = self._buffer, True
        while True:
            wanted = 65536
            if len(buffer) >= 4:
                end = 4 + _HEADER.unpack_from(buffer)[0]
                if len(buffer) >= end:
                    body = bytes(buffer[4:end])
                    del buffer[:end]        # taken even if it does not load: the next one is whole
                    return pickle.loads(body)
                wanted = max(wanted, end - len(buffer))
            if not first and deadline is not None:      # a message in pieces: the deadline holds
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                self._set_timeout(left, left)
            first = False
            try:
                chunk = self.sock.recv(wanted)
            except BlockingIOError:     # SO_RCVTIMEO ran out
                raise TimeoutError("timed out") from None
            if not chunk:
                raise EOFError
            buffer += chunk


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
        value = hook.run(*_run_args(request)) if request[0] == "run" else hook.reload()
        send.send(("done", _answer(value), None if hook.source is sent else hook.source))
        sent = hook.source


def _child_main():
    # The channel takes stdout's place; stdout itself goes to stderr, so that nothing
    # printed by a library can corrupt the protocol.
    os.dup2(2, 1)
    # A child stuck in a C call must not outlive a daemon that was killed. (The signal
    # follows the thread that started the child: a check worker, which lives as long as the
    # daemon; the pool's hook processes are started and replaced only by check workers.)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(sys.argv[1]):   # the daemon died before that took effect
        return
    channel = _Channel(socket.socket(fileno=0))
    _serve(channel, channel)


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
        self._channel = None
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
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                child = subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid())], stdin=theirs,
                                         close_fds=True)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            affinity.release(child.pid)     # its start-up (an interpreter, lupa, RE2) may use any core; settle() once ready
            ours.settimeout(None)
            channel = _Channel(ours)
            self._child, self._channel = child, channel
            self._ready = False
        try:
            channel.send((self._spec, self._options, self._source))
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
            child, channel = self._child, self._channel
            self._child = self._channel = None
        if child is None:
            return
        child.kill()
        child.wait()
        channel.close()

    def _restart(self):
        self._stop()
        self._start()

    def _receive(self, deadline):
        """The child's next answer, logging what it logs meanwhile; None at the deadline or
        when the child is gone."""
        conn = self._channel    # close() may clear it meanwhile (shut-down)
        if conn is None:
            return None
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    return None
                message = conn.recv(left)
            except Exception:   # the end, the time-out, or an answer that does not load: a new child
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
        child = self._child
        if child is not None:
            affinity.settle(child.pid)    # on the mail process's core from now on, if it has one of its own

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
        child, channel = self._child, self._channel      # close() may clear them meanwhile (shut-down)
        try:
            if channel is None:
                raise OSError("closed")
            channel.send(request)
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
        fields, why = self._call(_request(envelope, raw, analysis))
        if why is not None:
            return runtime.failure(envelope.queue_id, self.on_error, why)
        return Decision(*fields)

    def reload(self):
        replaced, why = self._call(("reload",))
        if why is not None:
            log.error("hook %s not reloaded: %s", self.path or "(inline)", why)
            return False
        return replaced


if __name__ == "__main__":
    _child_main()
