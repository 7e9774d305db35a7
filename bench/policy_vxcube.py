"""Benchmark: the cost of the Lua hook, and head-of-line blocking by pending vxCube analyses.

In one run, on one smtp-sink:
1. hook cost per message: the default hook (config/hooks/default.lua) on a clean 4 KB message
   and on one with a suspicious file (header + subject edits), p50/p99 of HookRuntime.run;
2. throughput (smtp-source, 4 KB, 1 recipient, 10 sessions, new and reused connections) of
   vxgate with no hook (pass-through) against vxgate with the default hook;
3. vxgate with vxCube on (the emulator, analysis time a few seconds): clean mail without
   attachments, first with nothing pending, then while 200 messages with 200 distinct
   attachments wait for their analyses; and the number of uploads against distinct files.

Run from the repository root: ``.venv/bin/python bench/policy_vxcube.py [--quick]``.
"""
import argparse
import json
import os
import smtplib
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from passthrough import REPO, Processes, Sink, Vxgate, free_port, measure_cell, run_source  # noqa: E402

from salmon_app.policy.bench import measure  # noqa: E402
from salmon_app.vxcube.sim import VxcubeSim  # noqa: E402

KEY = "b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
PLAIN = (b"From: a@bench.example\r\nTo: b@bench.example\r\nSubject: bench\r\n"
         b"Message-ID: <1@bench.example>\r\n\r\n" + b"x" * 76 + b"\r\n") * 1 + (b"y" * 76 + b"\r\n") * 50


def exe_mail(n):
    from email.message import EmailMessage
    from email import policy
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@bench.example", "b@bench.example", "file %d" % n
    msg.set_content("see attached\n")
    payload = b"MZ" + b"\0" * 58 + b"\x80\0\0\0" + b"\0" * 64 + b"PE\0\0" + b"\0" * 64 + b"distinct %d" % n
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="f%d.exe" % n)
    return msg.as_bytes(policy=policy.SMTP)


def states_total(vx):
    return sum(vx.states().values())


def cells(count):
    return [{"size_label": "4KB", "size": 4096, "rcpts": 1, "mode": mode, "count": count} for mode in ("new", "reused")]


def throughput(label, processes, sink, sink_port, workdir, count, maild="", root=""):
    port = free_port()
    vx = Vxgate(processes, os.path.join(workdir, label), port, sink_port, 200, maild=maild, root=root)
    try:
        result = {}
        for cell in cells(count):
            measured = measure_cell("vxgate", port, sink, cell, 10, processes, vx=vx)
            result[cell["mode"]] = {"rate": round(measured["rate"], 1), "problems": measured["problems"],
                                    "cpu_ms_per_message": measured.get("vxgate_cpu_ms_per_message")}
            print("  %-28s %-6s %7.1f msg/s  %s ms CPU/msg%s" % (
                label, cell["mode"], measured["rate"], measured.get("vxgate_cpu_ms_per_message"),
                "  PROBLEM: " + "; ".join(measured["problems"]) if measured["problems"] else ""))
        return vx, port, result
    except BaseException:
        processes.stop(vx.proc)
        raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages (300 per cell, 100 analyses)")
    parser.add_argument("--analysis-time", type=float, default=30.0,
                        help="emulator analysis time (30 s: the analyses stay pending through the clean load)")
    args = parser.parse_args()
    count = 300 if args.quick else 1500
    pending_files = 100 if args.quick else 200
    report = {"benchmark": "policy_vxcube", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick}
    workdir = tempfile.mkdtemp(prefix="vxgate-bench2-")
    processes = Processes()
    sim = VxcubeSim("127.0.0.1", 0, api_key=KEY, analysis_time=args.analysis_time).start()
    try:
        print("== 1. hook cost per message (HookRuntime.run, 2000 runs)")
        hook = os.path.join(REPO, "config", "hooks", "default.lua")
        clean = measure(hook, PLAIN, 2000)
        suspicious = measure(hook, PLAIN, 2000, analysis={"verdict": "suspicious", "files": []})
        report["hook_cost"] = {"clean": clean, "suspicious": suspicious}
        for name, m in (("clean", clean), ("suspicious", suspicious)):
            print("  default hook, %-10s p50 %.0f us  p99 %.0f us" % (name, m["p50"] * 1e6, m["p99"] * 1e6))

        sink_port = free_port()
        sink = Sink(processes, sink_port)
        print("\n== 2. throughput: no hook against the default hook (4 KB, 1 recipient, 10 sessions)")
        results = {}
        for label, maild in (("pass-through (no hook)", "SmtpHook =\n"), ("default hook", "")):
            vx, _, results[label] = throughput(label, processes, sink, sink_port, workdir, count, maild=maild)
            processes.stop(vx.proc)
        report["throughput"] = results
        for mode in ("new", "reused"):
            ratio = results["default hook"][mode]["rate"] / results["pass-through (no hook)"][mode]["rate"]
            print("  default hook / pass-through, %-6s %.2f" % (mode, ratio))

        print("\n== 3. vxCube on (emulator, analysis %.0f s): clean mail with and without %d analyses pending"
              % (args.analysis_time, pending_files))
        # default polling; no upload budget: the pending files all come from one sender, and
        # past 100 of them the budget would make the rest unchecked instead of pending
        root = ("UseVxcube = Yes\nVxcubeApiAddress = %s\nVxcubeApiKey = %s\nVxcubeUploadBudget = 0\n"
                % (sim.url, KEY))
        vx, port, idle = throughput("vxCube on, none pending", processes, sink, sink_port, workdir, count,
                                    maild="SmtpReplyTimeout = 0.5s\n", root=root)
        errors = []

        def send_files(numbers):
            for n in numbers:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                        client.sendmail("a@bench.example", ["b@bench.example"], exe_mail(n))
                except Exception as exc:
                    errors.append(repr(exc))
        threads = [threading.Thread(target=send_files, args=(range(i, pending_files, 20),)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = sim.stats()
        print("  %d messages with files accepted (%d errors); vxCube: %d uploads, %d analyses started"
              % (pending_files - len(errors), len(errors), stats["uploads"], stats["analyses"]))
        busy = {}
        for cell in cells(count):
            # measured by smtp-source alone: analysed messages reach the sink meanwhile, so the
            # sink's count cannot be checked cell by cell here (the totals are checked below)
            before = states_total(vx)
            elapsed, status, text = run_source(port, cell["count"], cell["size"], cell["rcpts"],
                                               cell["mode"] == "reused", 10, processes, 300)
            rate = cell["count"] / elapsed
            busy[cell["mode"]] = {"rate": round(rate, 1), "source_status": status,
                                  "analysing_at_end": vx.states().get("analysing", 0)}
            print("  %-28s %-6s %7.1f msg/s (%.0f%% of none pending; %d still analysing)%s" % (
                "vxCube on, analyses pending", cell["mode"], rate, 100 * rate / idle[cell["mode"]]["rate"],
                busy[cell["mode"]]["analysing_at_end"], "" if status == 0 else "  PROBLEM: smtp-source %s" % status))
            assert states_total(vx) - before == cell["count"]
        pending_after = vx.states().get("analysing", 0)
        deadline = time.time() + 120 + args.analysis_time * 10
        while time.time() < deadline and vx.states().get("analysing", 0):
            time.sleep(1)
        stats = sim.stats()
        states = vx.states()
        expected = 2 * count + pending_files + 2 * count
        report["vxcube"] = {"none_pending": idle, "pending": busy, "pending_files": pending_files,
                            "sink_total": sink.count(), "sink_expected_at_least": expected,
                            "still_analysing_after_load": pending_after, "uploads": stats["uploads"],
                            "upload_requests": stats["upload_requests"], "states": states, "errors": errors}
        print("  still analysing when the clean load ended: %d; finally: %s" % (pending_after, states))
        print("  uploads %d for %d distinct files (%s)" % (stats["uploads"], pending_files,
                                                         "equal" if stats["uploads"] == pending_files else "DIFFERENT"))
        processes.stop(vx.proc)
    finally:
        processes.stop_all()
        sim.stop()
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    out = os.path.join(REPO, "bench", "results", "policy_vxcube-%s.json" % time.strftime("%Y%m%d-%H%M%S"))
    with open(out, "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    print("\nJSON: %s" % out)


if __name__ == "__main__":
    main()
