"""CPU affinity: each mail process on one core of its own, its hook processes on any.

A Python process runs one thread at a time (the interpreter lock), yet the kernel spreads
its threads over every core. Each time one of them blocks in a system call and another takes
the lock, the lock and the threads travel between cores: on a 2-core machine half of vxgate's
CPU time went to waking threads and handing the lock over (``perf``: futex, the scheduler).
Kept on one core, the same process did the same work with a third less CPU per message
(4 KB pass-through: +43% msg/s with one process, +31% with two; bench/README.md). nginx's
``worker_cpu_affinity auto`` and HAProxy's ``cpu-map`` pin their workers the same way.

The processes of a set (``Processes``) take the cores they may use in turn; a single process
stays on the core it starts on, so that two daemons on one machine seldom share one. The
hook processes (``policy/process.py``) are interpreters of their own, with no lock to share:
they run on any core the daemon was given (``release``). ``PinProcesses = No`` leaves every
process to the scheduler.
"""
import logging
import os

LOG = logging.getLogger("vxgate")
ENV = "VXGATE_CPUS"     # the cores the daemon was given, for the processes it starts


def _current_cpu():
    # the "processor" field of /proc/self/stat, the core this process last ran on: the
    # standard library has no sched_getcpu()
    with open("/proc/self/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[36])


def pin(slot=None):
    """Keep every thread of this process (those running now and those it starts) on one
    core: the ``slot``-th of the cores it may use, or with ``slot`` None the one it is on.
    Returns that core, or None (logged) when the system does not allow it."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.environ[ENV] = ",".join(str(c) for c in cpus)
        if slot is not None:
            cpu = cpus[slot % len(cpus)]
        else:
            cpu = _current_cpu()
            cpu = cpu if cpu in cpus else cpus[0]
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), {cpu})
            except ProcessLookupError:      # a thread that ended meanwhile
                pass
    except (OSError, ValueError, IndexError) as exc:
        LOG.warning("PinProcesses: cannot keep this process on one CPU core (%s); "
                    "the scheduler places its threads (set PinProcesses = No to skip this)", exc)
        return None
    return cpu


def release():
    """In a process the daemon started (a hook process): run on every core the daemon was
    given, not only on the daemon's own."""
    cpus = os.environ.get(ENV)
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    except (OSError, ValueError):
        pass        # it stays where it was started: slower, never wrong
