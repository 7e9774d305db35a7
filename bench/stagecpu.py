#!/usr/bin/env python3
"""CPU per message of each part of vxgate under one load: sessions, check and relay workers, hook processes.

Starts a smtp-sink and vxgate as ``bench/passthrough.py`` does, names the salmon process's
threads once with ``py-spy dump`` (the stage workers are long-lived: ``check-N``, ``relay-N``),
sends one load with smtp-source and reads each thread's user and system CPU from
``/proc/<pid>/task``; what the named threads did not use was used by the session threads
(one per connection, gone when it ends) and by threads that ended. The hook processes
(children) are counted apart. py-spy: ``.venv/bin/pip install py-spy``.

Usage (from the repo root): .venv/bin/python bench/stagecpu.py [--count 3000] [--new] [--source DIR]
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from passthrough import Processes, Sink, Vxgate, free_port, run_source  # noqa: E402

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


def names(py_spy, pid):
    """{tid: thread name} from py-spy dump ("Thread 1234 (idle): "check-0"")."""
    text = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    return {int(m.group(1), 0): m.group(2) for m in re.finditer(r'Thread (0x[0-9A-Fa-f]+|\d+) \([^)]*\): "([^"]*)"', text)}


def kind(name):
    return re.sub(r"-\d+$", "", name or "?")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rcpts", type=int, default=1)
    parser.add_argument("--new", action="store_true", help="a new connection per message (default: reused)")
    parser.add_argument("--source", default=None, help="another vxgate checkout")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    workdir = tempfile.mkdtemp(prefix="vxgate-stagecpu-")
    processes = Processes()
    try:
        sink_port, port = free_port(), free_port()
        Sink(processes, sink_port)
        kwargs = {"source": os.path.abspath(args.source)} if args.source else {}
        vx = Vxgate(processes, os.path.join(workdir, "vxgate"), port, sink_port, 200, **kwargs)
        run_source(port, 300, args.size, args.rcpts, not args.new, 10, processes, 120)   # warm up
        named = names(py_spy, vx.pid)
        before, process0, kids0 = threads(vx.pid), _times("/proc/%d/stat" % vx.pid), children(vx.pid)
        elapsed, status, _ = run_source(port, args.count, args.size, args.rcpts, not args.new, 10, processes, 600)
        after, process1, kids1 = threads(vx.pid), _times("/proc/%d/stat" % vx.pid), children(vx.pid)
        processes.stop(vx.proc, timeout=90)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    per = collections.defaultdict(lambda: [0.0, 0.0])
    for tid, (user, system) in after.items():
        if tid in before and tid in named:
            per[kind(named[tid])][0] += user - before[tid][0]
            per[kind(named[tid])][1] += system - before[tid][1]
    total = (process1[0] - process0[0], process1[1] - process0[1])
    rest = [total[0] - sum(v[0] for v in per.values()), total[1] - sum(v[1] for v in per.values())]
    per["sessions and ended threads"] = rest
    per["hook processes"] = [kids1[0] - kids0[0], kids1[1] - kids0[1]]
    n = args.count
    print("%d messages in %.2fs = %.0f msg/s (smtp-source status %s)" % (n, elapsed, n / elapsed, status))
    print("%-28s %8s %8s %8s   (CPU ms per message)" % ("part", "user", "system", "total"))
    grand = [0.0, 0.0]
    for name, (user, system) in sorted(per.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        if user + system < 0.005 * n / 1000:
            continue
        grand[0] += user
        grand[1] += system
        print("%-28s %8.2f %8.2f %8.2f" % (name, 1000 * user / n, 1000 * system / n, 1000 * (user + system) / n))
    print("%-28s %8.2f %8.2f %8.2f" % ("all", 1000 * grand[0] / n, 1000 * grand[1] / n, 1000 * sum(grand) / n))


if __name__ == "__main__":
    main()
