#!/usr/bin/env python3
"""Nodes benchmark: pass-through on one node with SQLite vs PostgreSQL, and two nodes vs one.

One run starts a private ``smtp-sink`` and a private PostgreSQL cluster (initdb + pg_ctl in a
temporary directory: tests/support/pgcluster.py), then measures, with the same smtp-source load
(4 KB, 1 recipient, 10 sessions; connections reused or not):

- one vxgate node on its own SQLite file;
- one vxgate node on PostgreSQL (a fresh database with vxgate's schema);
- two vxgate nodes (own NodeName, spool and port) sharing one PostgreSQL database, each fed by
  its own smtp-source with half the messages at the same time.

It prints msg/s (messages / wall time of the run), vxgate's CPU ms per message (all nodes'
processes and their children) and, for PostgreSQL, the server's CPU ms per message (postmaster
and its backends). Every message must reach the sink and be recorded as delivered, else the
cell is reported as failed. Driving load and measuring CPU reuse bench/passthrough.py.

Usage (from the repo root):  .venv/bin/python bench/nodes.py [--count N] [--mode new|reused]
Every process it starts is stopped at the end, on errors and on Ctrl-C too.
"""
import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(REPO, "tests")]

from passthrough import (BenchError, Processes, Sink, free_port, run_source, tree_cpu_seconds,  # noqa: E402
                         wait_for_smtp)
from support import pgcluster  # noqa: E402

SIZE, RCPTS, SESSIONS = 4 * 1024, 1, 10


class Node:
    """One vxgate under ``salmon start --no-daemon``; ``database`` is "DatabasePath = …" or "DatabaseUrl = …"."""

    def __init__(self, processes, workdir, name, relay_port, database):
        os.makedirs(workdir, exist_ok=True)
        self.name, self.port, self.workdir = name, free_port(), workdir
        config = os.path.join(workdir, "vxgate.ini")
        with open(config, "w") as handle:
            handle.write("[Root]\nNodeName = %s\nLogTarget = File\nLogFile = %s\nPidFile = %s\n"
                         "[MailD]\nSmtpSocket = 127.0.0.1:%d\nSmtpSenderRelay = 127.0.0.1:%d\n"
                         "SmtpMaxConnections = 100\nSmtpHostname = %s.bench.example\nMetricsSocket =\n"
                         "[Quarantine]\nSpoolDir = %s\n%s\n"
                         % (name, os.path.join(workdir, "vxgate.log"), os.path.join(workdir, "vxgate.pid"),
                            self.port, relay_port, name, os.path.join(workdir, "spool"), database))
        env = dict(os.environ, VXGATE_CONFIG=config, VXGATE_ALLOW_ROOT="1")
        for name_ in ("VXGATE_LOGGING", "PYTHONPATH"):
            env.pop(name_, None)
        salmon = os.path.join(os.path.dirname(sys.executable), "salmon")
        self.output = open(os.path.join(workdir, "salmon.out"), "wb")
        self.proc = processes.start("vxgate", [salmon, "start", "--no-daemon", "--pid",
                                               os.path.join(workdir, "vxgate.pid")],
                                    cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self.output,
                                    stderr=self.output)
        self.pid = self.proc.pid
        wait_for_smtp(self.port, self.proc, 60, "vxgate " + name)


def delivered_sqlite(path):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM message WHERE state = 'delivered'").fetchone()[0]
    finally:
        conn.close()


def postmaster_pid(cluster):
    with open(os.path.join(cluster.data, "postmaster.pid")) as handle:
        return int(handle.readline())


def measure(name, nodes, sink, processes, count, reused, delivered, server_pid=None):
    """Feed ``count`` messages, split evenly over ``nodes`` at the same time; returns a result row."""
    share = count // len(nodes)
    before_sink, before_delivered = sink.count(), delivered()
    cpu0 = sum(tree_cpu_seconds(n.pid) for n in nodes)
    server0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
    outcomes = []

    def feed(node):
        outcomes.append(run_source(node.port, share, SIZE, RCPTS, reused, SESSIONS, processes, max(120, share // 5)))
    threads = [threading.Thread(target=feed, args=(n,)) for n in nodes]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    sent = share * len(nodes)
    seen = sink.wait_for(before_sink + sent, 30) - before_sink
    deadline = time.monotonic() + 30
    while delivered() - before_delivered < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    recorded = delivered() - before_delivered
    cpu = sum(tree_cpu_seconds(n.pid) for n in nodes) - cpu0
    problems = ["smtp-source status %s: %s" % (status, text[-200:]) for _, status, text in outcomes if status != 0]
    if seen != sent:
        problems.append("sink received %d of %d" % (seen, sent))
    if recorded != sent:
        problems.append("%d of %d recorded as delivered" % (recorded, sent))
    row = {"setup": name, "messages": sent, "seconds": elapsed, "rate": sent / elapsed,
           "vxgate_cpu_ms": 1000 * cpu / sent, "problems": problems}
    if server_pid:
        row["server_cpu_ms"] = 1000 * (tree_cpu_seconds(server_pid) - server0) / sent
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per setup (default 2000)")
    parser.add_argument("--mode", choices=("new", "reused"), default="new",
                        help="a new connection per message (default) or reused connections (-d)")
    args = parser.parse_args()
    reason = pgcluster.skip_reason()
    if reason:
        raise SystemExit("bench/nodes.py: %s" % reason)
    reused = args.mode == "reused"
    processes = Processes()
    work = tempfile.mkdtemp(prefix="vxgate-bench-nodes-")
    cluster = None
    rows = []
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        sink = Sink(processes, free_port())
        cluster = pgcluster.Cluster().init().start()
        server = postmaster_pid(cluster)

        db_path = os.path.join(work, "sqlite", "q.db")
        node = Node(processes, os.path.join(work, "sqlite"), "solo", sink.port, "DatabasePath = " + db_path)
        rows.append(measure("1 node, SQLite", [node], sink, processes, args.count, reused,
                            lambda: delivered_sqlite(db_path)))
        processes.stop(node.proc)

        def pg_delivered(url):
            return lambda: cluster.sql("SELECT COUNT(*) FROM message WHERE state = 'delivered'",
                                       url.rsplit("/", 1)[1])[0][0]
        url = cluster.new_database()
        node = Node(processes, os.path.join(work, "pg1"), "solo", sink.port, "DatabaseUrl = " + url)
        rows.append(measure("1 node, PostgreSQL", [node], sink, processes, args.count, reused,
                            pg_delivered(url), server))
        processes.stop(node.proc)

        url = cluster.new_database()
        pair = [Node(processes, os.path.join(work, "pg2-" + name), name, sink.port, "DatabaseUrl = " + url)
                for name in ("node-a", "node-b")]
        rows.append(measure("2 nodes, PostgreSQL", pair, sink, processes, args.count, reused,
                            pg_delivered(url), server))
    except (BenchError, KeyboardInterrupt) as exc:
        print("bench/nodes.py: %s" % (exc or "interrupted"), file=sys.stderr)
    finally:
        processes.stop_all()
        if cluster:
            cluster.destroy()
        signal.signal(signal.SIGTERM, previous)
    print("%d messages per setup, %d KB, %d recipient, %d sessions, %s connections, %d CPUs"
          % (args.count, SIZE // 1024, RCPTS, SESSIONS, args.mode, os.cpu_count()))
    print("%-22s %8s %16s %18s  %s" % ("setup", "msg/s", "vxgate CPU ms/msg", "PostgreSQL ms/msg", "problems"))
    for row in rows:
        server_ms = "%.2f" % row["server_cpu_ms"] if "server_cpu_ms" in row else "-"
        print("%-22s %8.0f %16.2f %18s  %s" % (row["setup"], row["rate"], row["vxgate_cpu_ms"], server_ms,
                                               "; ".join(row["problems"]) or "none"))
    failed = len(rows) < 3 or any(row["problems"] for row in rows)
    if failed:
        print("vxgate's files and logs kept in %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
