#!/usr/bin/env python3
"""Where vxgate's time goes under load: a py-spy sampling profile of the salmon process.

Starts a smtp-sink and vxgate as ``bench/passthrough.py`` does, sends one load through it
with smtp-source (4 KB, 1 recipient, 10 sessions, reused connections by default) while
``py-spy record`` samples every thread of the salmon process, and prints the functions
with the most samples, by own time and by total time (the calls below them included), as
percentages. py-spy is not one of vxgate's dependencies: ``.venv/bin/pip install py-spy``.

Usage (from the repo root, as root: py-spy attaches to another process):
    .venv/bin/python bench/profile.py [--count 6000] [--new] [--size 4096] [--wall]
By default only running threads are sampled (py-spy's own rule: a thread blocked in a
system call is idle); ``--wall`` samples waiting threads too, which shows where waits are.
Output: the tables on stdout, and the raw samples in bench/results/profile-<timestamp>.txt.

Then the CPU per message of each kind of thread, read from ``/proc/<pid>/task`` (user and
system time; py-spy's samples leave the kernel out): the stage workers (``check``, ``relay``,
named once with ``py-spy dump``), the session threads (one per connection, gone when it ends:
what the named threads did not use) and the hook processes (the children).
"""
import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from passthrough import RESULTS_DIR, Processes, Sink, Vxgate, free_port, run_source  # noqa: E402


def summarise(path, top):
    """(own, total) Counters of "function (file:line)" over the collapsed stacks in ``path``."""
    own, total, samples = collections.Counter(), collections.Counter(), 0
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            samples += count
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            own[_short(frames[-1])] += count
            for frame in set(_short(f) for f in frames):
                total[frame] += count
    return samples, own.most_common(top), total.most_common(top)


def _short(frame):
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3", "/work/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return "%s (%s)" % (name, where)


TICK = os.sysconf("SC_CLK_TCK")


def _times(path):
    with open(path) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def threads(pid):
    """{tid: (user, system)} of the live threads of ``pid``."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            out[int(tid)] = _times("/proc/%d/task/%s/stat" % (pid, tid))
        except OSError:
            pass
    return out


def children(pid):
    total = [0.0, 0.0]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) != pid:
                        continue
                user, system = _times("/proc/%s/stat" % entry)
            except (OSError, IndexError, ValueError):
                continue
            total[0] += user
            total[1] += system
    return tuple(total)


def thread_names(py_spy, pid):
    """{tid: thread name} from py-spy dump ("Thread 1234 (idle): "check-0"")."""
    text = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    return {int(m.group(1), 0): m.group(2) for m in re.finditer(r'Thread (0x[0-9A-Fa-f]+|\d+) \([^)]*\): "([^"]*)"', text)}


def kind(name):
    return re.sub(r"-\d+$", "", name or "?")


def print_stages(before, after, named, process0, process1, kids0, kids1, count):
    """CPU ms per message by kind of thread: what the named (long-lived) threads did not use
    was used by the session threads (one per connection) and threads that ended."""
    per = collections.defaultdict(lambda: [0.0, 0.0])
    for tid, (user, system) in after.items():
        if tid in before and tid in named:
            per[kind(named[tid])][0] += user - before[tid][0]
            per[kind(named[tid])][1] += system - before[tid][1]
    total = (process1[0] - process0[0], process1[1] - process0[1])
    per["sessions and ended threads"] = [total[0] - sum(v[0] for v in per.values()),
                                         total[1] - sum(v[1] for v in per.values())]
    per["hook processes"] = [kids1[0] - kids0[0], kids1[1] - kids0[1]]
    print("\n%-28s %8s %8s %8s   (CPU ms per message)" % ("part", "user", "system", "total"))
    grand = [0.0, 0.0]
    for name, (user, system) in sorted(per.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        if user + system < 0.005 * count / 1000:
            continue
        grand[0] += user
        grand[1] += system
        print("%-28s %8.2f %8.2f %8.2f" % (name, 1000 * user / count, 1000 * system / count,
                                           1000 * (user + system) / count))
    print("%-28s %8.2f %8.2f %8.2f" % ("all", 1000 * grand[0] / count, 1000 * grand[1] / count,
                                       1000 * sum(grand) / count))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rcpts", type=int, default=1)
    parser.add_argument("--new", action="store_true", help="a new connection per message (default: reused)")
    parser.add_argument("--wall", action="store_true",
                        help="count waiting threads too (py-spy --idle): waits on sockets, queues, locks, fsync")
    parser.add_argument("--gil", action="store_true",
                        help="only the thread holding the GIL (py-spy --gil): where Python's CPU time goes")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--source", default=None, help="another vxgate checkout to profile")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    workdir = tempfile.mkdtemp(prefix="vxgate-profile-")
    processes = Processes()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    raw = os.path.join(RESULTS_DIR, "profile-%s.txt" % stamp)
    try:
        sink_port, port = free_port(), free_port()
        Sink(processes, sink_port)
        kwargs = {"source": os.path.abspath(args.source)} if args.source else {}
        vx = Vxgate(processes, os.path.join(workdir, "vxgate"), port, sink_port, 200, **kwargs)
        run_source(port, 300, args.size, args.rcpts, not args.new, 10, processes, 120)   # warm up
        named = thread_names(py_spy, vx.pid)
        argv = [py_spy, "record", "--pid", str(vx.pid), "--format", "raw", "--output", raw, "--rate",
                str(args.rate), "--nonblocking"] + (["--idle"] if args.wall else []) + (["--gil"] if args.gil else [])
        spy = processes.start("py-spy", argv, stop_signal=signal.SIGINT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        cpu0 = threads(vx.pid), _times("/proc/%d/stat" % vx.pid), children(vx.pid)
        elapsed, status, text = run_source(port, args.count, args.size, args.rcpts, not args.new, 10, processes, 600)
        cpu1 = threads(vx.pid), _times("/proc/%d/stat" % vx.pid), children(vx.pid)
        processes.stop(spy, timeout=30)     # SIGINT: py-spy writes its file and exits
        print("%d messages in %.2fs = %.0f msg/s (smtp-source status %s)" % (
            args.count, elapsed, args.count / elapsed, status))
        processes.stop(vx.proc, timeout=90)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    samples, own, total = summarise(raw, args.top)
    print("\n%d samples (%s); own time:" % (samples, "the GIL holder" if args.gil else "wall time, waiting threads included" if args.wall else "running threads"))
    for name, count in own:
        print("  %5.1f%%  %s" % (100.0 * count / samples, name))
    print("\ntotal time (with callees):")
    for name, count in total:
        print("  %5.1f%%  %s" % (100.0 * count / samples, name))
    print("\nraw samples: %s" % os.path.relpath(raw))
    print_stages(cpu0[0], cpu1[0], named, cpu0[1], cpu1[1], cpu0[2], cpu1[2], args.count)


if __name__ == "__main__":
    main()
