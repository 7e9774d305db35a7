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
"""
import argparse
import collections
import os
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
        argv = [py_spy, "record", "--pid", str(vx.pid), "--format", "raw", "--output", raw, "--rate",
                str(args.rate), "--nonblocking"] + (["--idle"] if args.wall else []) + (["--gil"] if args.gil else [])
        spy = processes.start("py-spy", argv, stop_signal=signal.SIGINT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        elapsed, status, text = run_source(port, args.count, args.size, args.rcpts, not args.new, 10, processes, 600)
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


if __name__ == "__main__":
    main()
