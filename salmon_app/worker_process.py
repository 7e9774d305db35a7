"""A process the master starts (``Processes`` > 1, ``salmon_app/processes.py``): the same boot as
``salmon start --no-daemon``, as process ``$VXGATE_SLOT`` on the master's listening sockets.

It ends with the master: the kernel sends it SIGTERM when the master dies (``PR_SET_PDEATHSIG``),
so a killed master never leaves processes behind that a new daemon would meet on the same node
names; it then finishes the work in hand and stops as on ``salmon stop``.
"""
import ctypes
import json
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


class ThisProcess:
    """What ``config/boot.py`` needs to wire process ``slot`` of ``count``."""

    def __init__(self, slot, count, fds):
        import socket
        self.slot, self.count = slot, count
        first = os.environ.get("VXGATE_FIRST_CPU", "")
        self.first_cpu = int(first) if first.isdigit() else None     # where the set's cores begin
        self.sockets = {mode: socket.socket(fileno=fd) for mode, fd in fds.items()}
        self.pid_path = os.environ.get("VXGATE_PID_PATH")     # its reload outcome goes beside it
        self.pinned = _read_all(int(os.environ["VXGATE_PINNED_FD"])) if os.environ.get("VXGATE_PINNED_FD") else {}
        self.shares = None
        if os.environ.get("VXGATE_SHARES_FD"):
            from salmon_app.shares import Shares
            self.shares = Shares(int(os.environ["VXGATE_SHARES_FD"]), slot, count)

    def pin(self, config):
        """The file's configuration with the master's values for what takes a restart (a
        process started again must not move to another spool, database or log)."""
        from salmon_app.processes import unpinned
        return config.replace(**unpinned(self.pinned))

    def config(self, config):
        """This process's configuration: ``pin``, then its own node, spool and share
        (``subnodes.slot_config``)."""
        from salmon_app.storage import subnodes
        return subnodes.slot_config(self.pin(config), self.slot, self.count)

    @staticmethod
    def announce(gateway):
        from salmon_app import sdnotify
        sdnotify.notify("VXGATE_METRICS=%d" % gateway.metrics.port)


def _read_all(fd):
    with os.fdopen(fd, "rb") as pipe:
        return json.loads(pipe.read().decode() or "{}")


def this_process():
    """A ThisProcess when the master started this process, else None."""
    if "VXGATE_SLOT" not in os.environ:
        return None
    return ThisProcess(int(os.environ["VXGATE_SLOT"]), int(os.environ["VXGATE_PROCESSES"]),
                       json.loads(os.environ["VXGATE_LISTEN_FDS"]))


def follow_master():
    # prctl(2) has no binding in the standard library; python-prctl would be a compiled
    # dependency for one call
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if str(os.getppid()) != os.environ.get("VXGATE_MASTER_PID"):
        raise SystemExit("vxgate: the master process ended before this process started")


def main():
    follow_master()
    os.umask(0o077)
    sys.path.insert(0, os.getcwd())
    from config import settings      # noqa: F401  (the configuration, as salmon start loads it)
    import config.boot               # noqa: F401 pylint: disable=unused-import  (wires this process: this_process)
    try:
        settings.receiver.start()
    except SystemExit:
        raise
    except BaseException as exc:
        print("vxgate: process %s stopped: %s" % (os.environ.get("VXGATE_SLOT"), exc), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
