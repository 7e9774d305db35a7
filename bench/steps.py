#!/usr/bin/env python3
"""Work per message that does not move with the machine: Python steps and instructions.

On a shared 2-core machine the rate and CPU time of one build ranged ±25% within an hour, so
a change of a few per cent cannot be seen in them (bench/README.md). This counts instead,
for vxgate's mail process (``Processes = 1``) while smtp-source sends 4 KB messages over
reused connections, 2 sessions:

- **steps**: the Python bytecode instructions run per message, by source file and by
  function (``sys.settrace`` opcode events, switched on and off by SIGUSR2 from a
  ``sitecustomize`` this script puts on the mail process's path). Repeatable to a few in
  ten thousand; the time per step is not constant, so read them as where the interpreter
  works, not as CPU;
- **instructions** (``--callgrind``, needs valgrind): the machine instructions per message of
  the mail process, its C libraries included (SQLite, OpenSSL, libc), under callgrind:
  repeatable to about 1%. Neither counts the kernel or the hook processes.

Usage, from the repository root:
    .venv-bench/bin/python bench/steps.py [--source DIR ...] [--count 150] [--callgrind]
``--source`` names another checkout (e.g. ``git worktree add --detach /tmp/before main``),
once per build to compare; the default is this one.
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
import passthrough  # noqa: E402
from passthrough import REPO, Processes, Sink, Vxgate, free_port, run_source  # noqa: E402

# Loaded by the mail process (PYTHONPATH): counts opcodes per code object while armed.
SITECUSTOMIZE = r'''
import collections, os, signal, sys, threading
_COUNTS, _ON = collections.Counter(), [False]
def _tracer(frame, event, arg):
    if event == "opcode":
        _COUNTS[frame.f_code] += 1
    return _tracer
def _calls(frame, event, arg):
    if not _ON[0]:
        return None
    frame.f_trace_opcodes = True
    return _tracer
sys.settrace(_calls)
threading.settrace(_calls)
def _toggle(*args):
    if _ON[0]:
        _ON[0] = False
        while True:
            try:
                counts = dict(_COUNTS)
                break
            except RuntimeError:        # another thread counted meanwhile
                pass
        with open(os.environ["VXGATE_STEPS_OUT"], "w") as out:
            for code, n in counts.items():
                out.write("%d\t%s\t%d\t%s\n" % (n, code.co_filename, code.co_firstlineno, code.co_name))
    else:
        _COUNTS.clear()
        _ON[0] = True
signal.signal(signal.SIGUSR2, _toggle)
'''


def short(path, source):
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.relpath(path, source) if path.startswith(source + os.sep) else path


def counted_steps(source, count, workdir, processes, sink_port):
    """{(file, line, function): steps per message} of the mail process of ``source``."""
    hook_dir = os.path.join(workdir, "steps-site")
    os.makedirs(hook_dir, exist_ok=True)
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as handle:
        handle.write(SITECUSTOMIZE)
    out = os.path.join(workdir, "steps.tsv")
    start = processes.start

    def traced(name, argv, **kwargs):
        if name == "vxgate":
            env = dict(kwargs["env"], VXGATE_STEPS_OUT=out)
            env["PYTHONPATH"] = hook_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            kwargs["env"] = env
        return start(name, argv, **kwargs)
    processes.start = traced
    try:
        vx = Vxgate(processes, os.path.join(workdir, "vx"), free_port(), sink_port, 200, root="Processes = 1\n",
                    source=source)
    finally:
        processes.start = start
    try:
        _load(vx, 50, processes)        # warm: first connections, the hook processes' start
        os.kill(vx.pid, signal.SIGUSR2)
        _load(vx, count, processes)
        os.kill(vx.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(out) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)     # written at once by the signal handler; let it finish
        steps = {}
        with open(out) as handle:
            for line in handle:
                n, path, first, name = line.rstrip("\n").split("\t")
                steps[(short(path, os.path.abspath(source)), int(first), name)] = int(n) / count
        return steps
    finally:
        processes.stop(vx.proc)


def counted_instructions(source, count, workdir, processes, sink_port):
    """Machine instructions per message of the mail process (callgrind), or None without valgrind."""
    if not shutil.which("valgrind"):
        return None
    out_dir = os.path.join(workdir, "callgrind")
    os.makedirs(out_dir, exist_ok=True)
    start = processes.start

    def under_valgrind(name, argv, **kwargs):
        if name == "vxgate":
            argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s/cg.%%p" % out_dir,
                    sys.executable] + argv
        return start(name, argv, **kwargs)
    wait = passthrough.wait_for_smtp
    processes.start = under_valgrind
    passthrough.wait_for_smtp = lambda port, proc, timeout, what: wait(port, proc, 900, what)   # a slow start
    try:
        vx = Vxgate(processes, os.path.join(workdir, "cg-vx"), free_port(), sink_port, 200, root="Processes = 1\n",
                    source=source)
    finally:
        processes.start, passthrough.wait_for_smtp = start, wait
    try:
        _load(vx, 50, processes)
        subprocess.run(["callgrind_control", "-z", str(vx.pid)], capture_output=True, check=True)
        _load(vx, count, processes)
        subprocess.run(["callgrind_control", "-d", str(vx.pid)], capture_output=True, check=True)
        dumps = sorted((os.path.join(out_dir, f) for f in os.listdir(out_dir)), key=os.path.getmtime)
        with open(dumps[-1]) as handle:
            found = re.search(r"^(?:summary|totals): (\d+)", handle.read(), re.M)
        return int(found.group(1)) / count
    finally:
        processes.stop(vx.proc)


def _load(vx, count, processes):
    elapsed, status, text = run_source(vx.port, count, 4096, 1, True, 2, processes, 1800)
    if status != 0:
        raise RuntimeError("smtp-source ended with %s: %s" % (status, text[-500:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", help="a vxgate checkout to count (repeat to compare)")
    parser.add_argument("--count", type=int, default=150, help="messages counted (150)")
    parser.add_argument("--top", type=int, default=25, help="functions listed (25)")
    parser.add_argument("--callgrind", action="store_true", help="also count machine instructions (valgrind)")
    args = parser.parse_args()
    sources = args.source or [REPO]
    processes = Processes()
    workdir = tempfile.mkdtemp(prefix="vxgate-steps-")
    try:
        sink_port = free_port()
        Sink(processes, sink_port)
        for source in sources:
            steps = counted_steps(source, args.count, os.path.join(workdir, "s%d" % sources.index(source)),
                                  processes, sink_port)
            by_file = collections.Counter()
            for (path, _, _), n in steps.items():
                by_file[path] += n
            print("== %s: %.0f Python steps per message (4 KB, reused connections; the mail process)"
                  % (source, sum(steps.values())))
            for path, n in by_file.most_common(12):
                print("  %8.0f  %s" % (n, path))
            print("  by function:")
            for (path, first, name), n in sorted(steps.items(), key=lambda item: -item[1])[:args.top]:
                print("  %8.0f  %s (%s:%d)" % (n, name, path, first))
            if args.callgrind:
                ir = counted_instructions(source, max(args.count, 300), os.path.join(workdir, "c%d" % sources.index(source)),
                                          processes, sink_port)
                print("  machine instructions per message: %s" % ("%.0f thousand" % (ir / 1000) if ir else
                                                                 "valgrind is not installed"))
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
