"""The daemon's pid file (``PidFile``): how every control command finds the running vxgate.

``salmon start`` writes it through python-daemon when it daemonizes; in the foreground
(``--no-daemon``, systemd) vxgate writes it itself, so ``salmon stop``, ``vxgate reload-hooks``
and ``vxgate doctor`` read the same file however vxgate was started. A pid file whose process
is gone (a crash, ``kill -9``, a reboot) or is another program (the number was reused) is
stale: start removes it and says so, ``doctor`` says what happened.
"""
import dataclasses
import errno
import os


@dataclasses.dataclass
class PidState:
    path: str
    pid: int = None
    status: str = "absent"      # absent, running, gone, other, garbage, denied
    detail: str = ""

    @property
    def running(self):
        return self.status == "running"

    @property
    def stale(self):
        return self.status in ("gone", "other", "garbage")

    def describe(self):
        if self.status == "absent":
            return "no pid file %s: vxgate is not running" % self.path
        if self.status == "running":
            return "vxgate is running (pid %d, pid file %s)" % (self.pid, self.path)
        if self.status == "gone":
            return ("stale pid file %s: process %d is gone, so vxgate ended without `salmon stop` "
                    "(a crash, kill -9 or a reboot)" % (self.path, self.pid))
        if self.status == "other":
            return ("stale pid file %s: process %d is another program (%s), so vxgate ended without "
                    "`salmon stop` and the number was reused" % (self.path, self.pid, self.detail))
        if self.status == "denied":
            return "cannot read the pid file %s: %s (run this as the service user)" % (self.path, self.detail)
        return "stale pid file %s: %s" % (self.path, self.detail)


def _cmdline(pid):
    """The process's command line; None when it is gone or a zombie (dead, not yet reaped)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            if handle.read().rsplit(b")", 1)[-1].split()[:1] == [b"Z"]:
                return None
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    except OSError:
        return ""           # exists, but hidden from us (another user, hidepid): assume it is ours


def alive(pid):
    """The process exists and is not a zombie (dead, waiting to be reaped)."""
    if _cmdline(pid) is None and os.path.exists("/proc"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_vxgate(cmdline):
    return cmdline == "" or "salmon" in cmdline or "vxgate" in cmdline


def inspect(path):
    """What the pid file at ``path`` says, checked against the running processes."""
    state = PidState(os.path.abspath(path))
    try:
        with open(path) as handle:
            text = handle.read(64).strip()
    except FileNotFoundError:
        return state
    except OSError as exc:
        state.status, state.detail = "denied", exc.strerror
        return state
    try:
        state.pid = int(text.split()[0])
        if state.pid <= 0:
            raise ValueError
    except (ValueError, IndexError):
        state.status, state.detail = "garbage", "it holds %r, not a process number" % text[:20]
        return state
    if state.pid == os.getpid() or not alive(state.pid):
        state.status = "gone" if state.pid != os.getpid() else "running"
        return state
    cmdline = _cmdline(state.pid)
    if cmdline is None:
        state.status = "gone"
    elif is_vxgate(cmdline):
        state.status = "running"
    else:
        state.status, state.detail = "other", cmdline[:60]
    return state


def remove_stale(path, say):
    """Remove a stale pid file (telling ``say`` why); return the state seen."""
    state = inspect(path)
    if state.stale:
        say("vxgate: %s; removing it" % state.describe())
        try:
            os.unlink(state.path)
        except FileNotFoundError:
            pass
    return state


def claim(path):
    """Write this process's pid to ``path`` (foreground mode); a stale file is replaced."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            state = inspect(path)
            if state.running:
                raise RuntimeError(state.describe()) from None
            os.unlink(path)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write("%d\n" % os.getpid())
        return
    raise RuntimeError("cannot create the pid file %s" % path)


def release(path):
    """Remove ``path`` if it names this process (python-daemon removes its own in daemon mode)."""
    state = inspect(path)
    if state.pid == os.getpid():
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
