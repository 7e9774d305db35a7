"""CPU affinity: each mail process on one core of its own, its hook processes beside it (or on any).

A Python process runs one thread at a time (the interpreter lock), yet the kernel spreads
its threads over every core. Each time one of them blocks in a system call and another takes
the lock, the lock and the threads travel between cores: on a 2-core machine half of vxgate's
CPU time went to waking threads and handing the lock over (``perf``: futex, the scheduler).
Kept on one core, the same process did the same work with a third less CPU per message
(4 KB pass-through: +43% msg/s with one process, +31% with two; bench/README.md). nginx's
``worker_cpu_affinity auto`` and HAProxy's ``cpu-map`` pin their workers the same way.

The processes of a set (``Processes``) take the cores they may use in turn, from the one the
master is on; a single process stays on the core it starts on (two daemons on one machine
then share a core less often than if each began at core 0). With more processes than cores
none is pinned. The choice is made at start: a core taken offline later is left to the
kernel, which moves the process. The hook processes (``policy/process.py``) start on any core
the daemon was given (``release``). Once one is ready it joins its mail process's core when
every core carries a mail process (``settle``): the check worker waits for each answer, so
the two take turns on one core instead of waking each other across cores (on a virtual
machine each such wake-up is an interrupt between processors; 2 processes on 2 cores: 2-3%
more mail per second, 3% less CPU, in three A/B runs over two days). Where the set leaves
cores free (``Processes = 1`` on several) the hook processes keep them: there a shared core
cost 12% of the mail.

A pinned process's threads are also SCHED_BATCH, which the kernel does not let preempt the
thread running when they wake: a session woken by the relay thread that hands it a reply
would otherwise take the core from the thread that holds the interpreter lock, only to wait
for the lock and hand the core back. It halved the relay threads' involuntary context
switches (4.4 to 2.0 per message) for 2-4% more mail per second. A woken thread waits for
the running one to block, or at most a scheduler tick; no privilege is needed, and other
programs' threads keep their precedence over vxgate's on wake-up. Threads and hook processes
started later inherit both. ``PinProcesses = No`` leaves every process to the scheduler.
"""
import logging
import os

LOG = logging.getLogger("vxgate")
ENV = "VXGATE_CPUS"     # the cores the daemon was given, for the processes it starts
_HOOK_CORE = None       # the core this process's hook processes share with it (``settle``)


def _current_cpu():
    # the "processor" field of /proc/self/stat, the core this process last ran on: the
    # standard library has no sched_getcpu()
    with open("/proc/self/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[36])


def pin(slot=0, count=1, first=None):
    """Keep every thread of this process (those running now and those it starts) on one
    core. Process ``slot`` of ``count`` takes the cores it may use in turn from core
    ``first`` (the master's choice), a single process the core it is on. Returns the core,
    or None (logged) when it cannot: more processes than cores (two on one core would carry
    twice the mail of the others: the scheduler balances better), or a system that refuses."""
    global _HOOK_CORE
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if count > len(cpus):
            LOG.warning("PinProcesses: Processes = %d is more than the %d CPU cores vxgate may use; "
                        "its processes are left to the scheduler (lower Processes to pin them)", count, len(cpus))
            return None
        os.environ[ENV] = ",".join(str(c) for c in cpus)
        start = first if first in cpus else first_core()
        cpu = cpus[((cpus.index(start) if start in cpus else 0) + slot) % len(cpus)]
        _HOOK_CORE = cpu if count == len(cpus) else None     # every core carries a mail process
        batch = True
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), {cpu})
                batch = batch and _batch(int(task))
            except ProcessLookupError:      # a thread that ended meanwhile
                pass
    except (OSError, ValueError) as exc:
        LOG.warning("PinProcesses: cannot keep this process on one CPU core (%s); "
                    "the scheduler places its threads (set PinProcesses = No to skip this)", exc)
        return None
    return cpu


def _batch(task):
    """SCHED_BATCH for thread ``task``; False (logged) when the system refuses it (a sandbox
    that filters sched_setscheduler): the pin holds without it."""
    try:
        os.sched_setscheduler(task, os.SCHED_BATCH, os.sched_param(0))
        return True
    except ProcessLookupError:
        raise
    except OSError as exc:
        LOG.warning("PinProcesses: the threads stay in the normal scheduling class (SCHED_BATCH refused: %s)", exc)
        return False


def settle(pid):
    """Keep process ``pid`` (a hook process that is ready) on this process's core when every
    core carries a mail process; else it goes on using any (see the module's docstring)."""
    if _HOOK_CORE is None:
        return
    try:
        os.sched_setaffinity(pid, {_HOOK_CORE})
    except OSError:
        pass        # it ended, or the system refuses: it runs where it is, slower, never wrong


def first_core():
    """The core a set of processes starts from: the one the master is on, so that two
    daemons on one machine do not both begin at core 0."""
    try:
        return _current_cpu()
    except (OSError, ValueError, IndexError):
        return None


def release(pid):
    """Let process ``pid`` (a hook process just started) run on every core the daemon was
    given, not only on the daemon's own: done by the daemon at once, so that the child's
    start-up (an interpreter, lupa, RE2) does not run on the mail process's core."""
    cpus = os.environ.get(ENV)
    if not cpus:
        return
    try:
        os.sched_setaffinity(pid, {int(c) for c in cpus.split(",")})
    except (OSError, ValueError):
        pass        # it stays where it was started (or it ended): slower, never wrong
