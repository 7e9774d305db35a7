#!/usr/bin/env python3
"""Pass-through benchmark: smtp-source -> smtp-sink directly vs smtp-source -> vxgate -> smtp-sink.

One run starts a private ``smtp-sink`` on a free loopback port, measures the baseline
(``smtp-source`` straight into the sink) for every cell of the matrix, then starts vxgate
(``salmon start --no-daemon`` with its own spool, database and log in a temporary directory)
relaying to the same sink and measures the same cells through it.  It then relays one ~30 MB
MIME message through vxgate and reports the salmon process's peak memory (VmHWM) as a multiple
of the message size.

Matrix: message size 4 KB / 100 KB (``smtp-source -l``) x recipients 1 / 5 (``-r``; smtp-source
makes them distinct by prefixing a number) x a new connection per message / reused connections
(``-d``), 10 parallel sessions (``-s``), a fixed message count per cell (``-m``).

Every message is accounted for: the sink's own counter (``smtp-sink -c``) must grow by exactly
the number smtp-source sent, smtp-source must exit 0 (it aborts on any reply that is not the
expected 2xx/3xx), and vxgate's database must record every message as delivered.

Usage (from the repo root):  .venv/bin/python bench/passthrough.py [--quick]
Stdlib only.  Every process it starts is stopped at the end, on errors and on Ctrl-C too.
Results: a table on stdout and bench/results/passthrough-<timestamp>.json.
"""
import argparse
import base64
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin")
HOSTNAME = "bench.example"
SENDER = "sender@" + HOSTNAME
RECIPIENT = "rcpt@" + HOSTNAME

SIZES = [("4KB", 4 * 1024), ("100KB", 100 * 1024)]
RECIPIENTS = [1, 5]
MODES = [("new", "new connection per message"), ("reused", "reused connections (-d)")]
FULL_COUNTS = {"4KB": 2000, "100KB": 500}
QUICK_COUNTS = {"4KB": 300, "100KB": 100}

# The reference figures (2 cores, 4 KB, 1 recipient, 10 sessions), msg/s.
REFERENCE = {
    "smtp-source -> smtp-sink": {"new": 3800, "reused": 10500},
    "Amavis pass-through": {"new": 100, "reused": 195},
    "bare threaded Python filter, fsync per message": {"new": 400, "reused": 700},
}
VXGATE_STOP_TIMEOUT = 90.0
OTHER_CPU_WARNING = 20.0   # percent of one core used by processes that are not part of the benchmark
TARGETS = {"new": 250, "reused": 450, "peak_memory_multiple": 4.0}


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    pass


# ------------------------------------------------------------------ helpers
def tool(name):
    for folder in SBIN:
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    path = shutil.which(name)
    if not path:
        raise BenchError("%s not found (install Postfix: it ships smtp-source and smtp-sink)" % name)
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_smtp(port, proc, timeout, what):
    """Wait until ``port`` answers with a 220 greeting; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("%s exited with status %s before listening" % (what, proc.returncode))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                greeting = sock.recv(512)
                sock.sendall(b"QUIT\r\n")
                try:
                    sock.recv(512)
                except OSError:
                    pass
                if greeting.startswith(b"220"):
                    return greeting.decode("ascii", "replace").strip()
                last = greeting
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise BenchError("%s did not answer on 127.0.0.1:%d within %ds (%r)" % (what, port, timeout, last))


def proc_status(pid):
    """VmRSS/VmHWM/Threads of a process, in bytes (threads as a count)."""
    values = {}
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
                elif key == "Threads":
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def tree_cpu_seconds(pid):
    """cpu_seconds of ``pid`` and its live child processes (vxgate's hook processes run the Lua)."""
    total = cpu_seconds(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        total += cpu_seconds(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return total


def system_busy_seconds():
    """CPU seconds all processes of the machine ran since boot: user + nice + system.

    irq/softirq time is left out: loopback TCP work done there is nobody's process time, so
    counting it would charge our own traffic to "other processes"."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Splits the machine's busy CPU time into ours (this script, its children, vxgate, the sink)
    and everybody else's, so that a run disturbed by other work on the machine is visible."""

    def __init__(self, pids):
        self.pids = pids

    def _ours(self):
        own = os.times()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)   # waited-for smtp-source runs
        return (own.user + own.system + children.ru_utime + children.ru_stime
                + sum(tree_cpu_seconds(pid) for pid in self.pids() if pid))

    def start(self):
        self.t0, self.busy0, self.ours0 = time.monotonic(), system_busy_seconds(), self._ours()

    def stop(self):
        elapsed = time.monotonic() - self.t0
        busy, ours = system_busy_seconds() - self.busy0, self._ours() - self.ours0
        return {"machine_busy_percent": round(100 * busy / elapsed, 1),
                "other_processes_percent": round(max(0.0, 100 * (busy - ours) / elapsed), 1)}


def source_digest():
    """SHA-256 over vxgate's Python sources as they are on disk (the work tree may be ahead of HEAD)."""
    import hashlib
    digest = hashlib.sha256()
    for top in ("salmon_app", "handlers", "config"):
        for folder, dirs, files in sorted(os.walk(os.path.join(REPO, top))):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".py", ".conf", ".ini", ".lua")):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, REPO).encode() + b"\0")
                    with open(path, "rb") as handle:
                        digest.update(handle.read())
    return digest.hexdigest()[:16]


def git_revision():
    """The checked-out commit, read from .git without running git."""
    try:
        git = os.path.join(REPO, ".git")
        with open(os.path.join(git, "HEAD")) as handle:
            head = handle.read().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        path = os.path.join(git, ref)
        if os.path.exists(path):
            with open(path) as handle:
                return handle.read().strip()
        with open(os.path.join(git, "packed-refs")) as handle:
            for line in handle:
                if line.strip().endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        pass
    return ""


def fmt_rate(value):
    return "%.0f" % value if value == value else "n/a"


def mib(value):
    return value / (1024 * 1024)


# ------------------------------------------------------------------ processes
class Processes:
    """Every process the benchmark starts; ``stop_all()`` ends whatever is still running."""

    def __init__(self):
        self.procs = []   # (name, Popen, stop signal)

    def start(self, name, argv, stop_signal=signal.SIGTERM, **kwargs):
        # A new session: a Ctrl-C reaches only this script, which then stops the children in
        # order (vxgate first, cleanly) instead of every process dying at once.
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append((name, proc, stop_signal))
        return proc

    def stop(self, proc, timeout=30.0):
        for name, candidate, stop_signal in self.procs:
            if candidate is proc:
                break
        else:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(stop_signal)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print("  %s (pid %d) did not stop within %.0fs: killing it" % (name, proc.pid, timeout),
                      file=sys.stderr)
                proc.kill()
                proc.wait(10)
            except ProcessLookupError:
                pass
        return proc.returncode

    def stop_named(self, name):
        for candidate, proc, _ in self.procs:
            if candidate == name and proc.poll() is None:
                self.stop(proc, timeout=5.0)

    def stop_all(self):
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                self.stop(proc, timeout=VXGATE_STOP_TIMEOUT if name == "vxgate" else 5.0)
        for name, proc, _ in self.procs:
            if proc.poll() is None:   # last resort
                proc.kill()
                proc.wait(5)


class Sink:
    """A private smtp-sink whose running counter (-c) is read from its stdout."""

    def __init__(self, processes, port):
        self.port = port
        self.messages = 0
        self.sessions = 0
        self._lock = threading.Lock()
        argv = [tool("smtp-sink"), "-c", "-h", "sink.bench.example", "-t", "300"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]   # smtp-sink refuses to run as root without -u
        argv += ["127.0.0.1:%d" % port, "1000"]
        self.argv = argv
        self.proc = processes.start("smtp-sink", argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        self._tail = b""
        self._reader = threading.Thread(target=self._read, name="sink-reader", daemon=True)
        self._reader.start()
        wait_for_smtp(port, self.proc, 10, "smtp-sink")

    def _read(self):
        pattern = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            data = self._tail + chunk
            matches = pattern.findall(data)
            if matches:
                sess, mesg = matches[-1]
                with self._lock:
                    self.sessions, self.messages = int(sess), int(mesg)
            self._tail = data[-128:]

    def count(self):
        with self._lock:
            return self.messages

    def wait_for(self, expected, timeout):
        """Wait until the sink counted ``expected`` messages; returns the count seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.count()
            if seen >= expected or time.monotonic() >= deadline:
                return seen
            time.sleep(0.05)


class Vxgate:
    """vxgate under ``salmon start --no-daemon`` with its own spool, database and log."""

    def __init__(self, processes, workdir, port, relay_port, max_connections, log_level=None,
                 maild="", root=""):
        self.workdir, self.port = workdir, port
        os.makedirs(workdir, exist_ok=True)
        self.config_path = os.path.join(workdir, "vxgate.ini")
        self.db_path = os.path.join(workdir, "q.db")
        self.log_path = os.path.join(workdir, "vxgate.log")
        self.pid_path = os.path.join(workdir, "vxgate.pid")
        with open(self.config_path, "w") as handle:
            handle.write("[Root]\n%s\n[MailD]\nSmtpSocket = 127.0.0.1:%d\nSmtpSenderRelay = 127.0.0.1:%d\n"
                         "SmtpMaxConnections = %d\nSmtpHostname = vxgate.bench.example\n%s\n"
                         "[Quarantine]\nSpoolDir = %s\nDatabasePath = %s\n"
                         % (root, port, relay_port, max_connections, maild, os.path.join(workdir, "spool"),
                            self.db_path))
        logging_conf = os.path.join(workdir, "logging.conf")
        with open(os.path.join(REPO, "config", "logging.conf")) as handle:
            template = handle.read()
        if '"logs/vxgate.log"' not in template:
            raise BenchError("config/logging.conf no longer names \"logs/vxgate.log\"; update the benchmark")
        template = template.replace('"logs/vxgate.log"', repr(self.log_path))
        if log_level:
            template = re.sub(r"(?m)^level\s*=\s*\w+", "level=" + log_level, template)
        with open(logging_conf, "w") as handle:
            handle.write(template)
        env = dict(os.environ, VXGATE_CONFIG=self.config_path, VXGATE_LOGGING=logging_conf)
        if os.geteuid() == 0:
            env["VXGATE_ALLOW_ROOT"] = "1"     # a benchmark on a test machine, not a service
        env.pop("PYTHONPATH", None)
        self.stderr_path = os.path.join(workdir, "salmon.stderr")
        self._stderr = open(self.stderr_path, "wb")
        salmon = os.path.join(REPO, ".venv", "bin", "salmon")
        if not os.path.exists(salmon):
            salmon = os.path.join(os.path.dirname(sys.executable), "salmon")
        argv = [salmon, "start", "--pid", self.pid_path, "--no-daemon"]
        self.proc = processes.start("vxgate", argv, stop_signal=signal.SIGTERM, cwd=REPO, env=env,
                                    stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            self.greeting = wait_for_smtp(port, self.proc, 60, "vxgate")
        except BenchError:
            self._stderr.flush()
            raise BenchError("%s\n--- salmon output ---\n%s\n--- log tail ---\n%s"
                             % (sys.exc_info()[1], self.output_tail(), self.log_tail()))

    def output_tail(self, size=4000):
        try:
            with open(self.stderr_path, "rb") as handle:
                return handle.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, size=4000):
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def states(self):
        """Messages per state in vxgate's database (read-only look)."""
        if not os.path.exists(self.db_path):
            return {}
        conn = sqlite3.connect("file:%s?mode=ro" % self.db_path, uri=True, timeout=30)
        try:
            return dict(conn.execute("SELECT state, COUNT(*) FROM message GROUP BY state").fetchall())
        finally:
            conn.close()

    def log_problems(self):
        """Counts of WARNING/ERROR/CRITICAL lines and tracebacks in vxgate's log."""
        counts = {"WARNING": 0, "ERROR": 0, "CRITICAL": 0, "Traceback": 0}
        examples = []
        try:
            with open(self.log_path, "r", errors="replace") as handle:
                for line in handle:
                    for key in counts:
                        if (" %s " % key) in line or line.startswith(key):
                            counts[key] += 1
                            if len(examples) < 5 and key != "Traceback":
                                examples.append(line.strip()[:300])
        except OSError:
            pass
        return counts, examples


# ------------------------------------------------------------------ measuring
def run_source(port, count, size, rcpts, reused, sessions, processes, timeout):
    """One smtp-source run; returns (elapsed seconds, exit status, stderr text)."""
    argv = [tool("smtp-source"), "-s", str(sessions), "-m", str(count), "-l", str(size), "-r", str(rcpts),
            "-M", HOSTNAME, "-f", SENDER, "-t", RECIPIENT, "-S", "vxgate passthrough benchmark"]
    if reused:
        argv.append("-d")
    argv.append("127.0.0.1:%d" % port)
    started = time.monotonic()
    proc = processes.start("smtp-source", argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return time.monotonic() - started, "timeout after %ds" % timeout, err.decode("utf-8", "replace")
    elapsed = time.monotonic() - started
    text = (err + out).decode("utf-8", "replace").strip()
    return elapsed, proc.returncode, text


def measure_cell(target, port, sink, cell, sessions, processes, vx=None, repeats=1):
    """Send one cell's messages ``repeats`` times; returns the measurement dict."""
    runs = []
    for _ in range(repeats):
        before_sink = sink.count()
        before_states = vx.states() if vx else None
        before_cpu = tree_cpu_seconds(vx.pid) if vx else None
        # Generous but bounded: no cell may hang the benchmark.
        timeout = max(120, cell["count"] // 5)
        meter = CpuMeter(lambda: (sink.proc.pid, vx.pid if vx else None))
        meter.start()
        elapsed, status, text = run_source(port, cell["count"], cell["size"], cell["rcpts"],
                                           cell["mode"] == "reused", sessions, processes, timeout)
        expected = before_sink + cell["count"]
        # vxgate answers only after relaying, so the sink has everything already; allow a moment.
        seen = sink.wait_for(expected, 5 if status == 0 else 2) - before_sink
        run = {"seconds": round(elapsed, 4), "rate": cell["count"] / elapsed if elapsed > 0 else float("nan"),
               "source_status": status, "sink_received": seen}
        run.update(meter.stop())
        if text:
            run["source_output"] = text[-2000:]
        if vx:
            run["vxgate_cpu_seconds"] = round(tree_cpu_seconds(vx.pid) - before_cpu, 3)
            after = vx.states()
            run["delivered"] = after.get("delivered", 0) - before_states.get("delivered", 0)
            run["states_after"] = after
            if not vx.proc.poll() is None:
                run["vxgate_exited"] = vx.proc.returncode
        problems = []
        if status != 0:
            problems.append("smtp-source status %s: %s" % (status, text[-300:]))
        if seen != cell["count"]:
            problems.append("sink received %d of %d messages" % (seen, cell["count"]))
        if vx and run["delivered"] != cell["count"]:
            problems.append("vxgate recorded %d of %d messages as delivered (states now: %s)"
                            % (run["delivered"], cell["count"], run["states_after"]))
        if vx and vx.proc.poll() is not None:
            problems.append("vxgate exited with status %s" % vx.proc.returncode)
        run["problems"] = problems
        runs.append(run)
        if problems:
            break
    rates = [r["rate"] for r in runs if not r["problems"]]
    result = {"runs": runs, "rate": statistics.median(rates) if rates else float("nan"),
              "problems": [p for r in runs for p in r["problems"]],
              "other_processes_percent": max(r["other_processes_percent"] for r in runs)}
    if vx and runs:
        cpu = sum(r["vxgate_cpu_seconds"] for r in runs) / sum(r["seconds"] for r in runs)
        result["vxgate_cpu_percent"] = round(100 * cpu, 1)
        result["vxgate_cpu_ms_per_message"] = round(
            1000 * sum(r["vxgate_cpu_seconds"] for r in runs) / (cell["count"] * len(runs)), 3)
    return result


# ------------------------------------------------------------------ the big message
LOREM = ("Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
         "labore et dolore magna aliqua Ut enim ad minim veniam quis nostrud exercitation ullamco laboris "
         "nisi ut aliquip ex ea commodo consequat Duis aute irure dolor in reprehenderit in voluptate velit "
         "esse cillum dolore eu fugiat nulla pariatur Excepteur sint occaecat cupidatat non proident sunt in "
         "culpa qui officia deserunt mollit anim id est laborum").split()


def big_message(total):
    """A real multipart/mixed MIME message of about ``total`` bytes: a plain-text part of varied
    prose lines and a base64 attachment (76-character lines); every line CRLF-ended and <= 998."""
    rng = random.Random(1)
    boundary = "=_vxgate_bench_%08x" % rng.getrandbits(32)
    head = ("From: Bench Sender <%s>\r\nTo: Bench Recipient <%s>\r\nSubject: vxgate 30 MB memory probe\r\n"
            "Date: %s\r\nMessage-ID: <bigmsg.%d@%s>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n"
            "This is a multi-part message in MIME format.\r\n\r\n"
            % (SENDER, RECIPIENT, time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
               os.getpid(), HOSTNAME, boundary)).encode()
    text_target = total // 2
    words = [rng.choice(LOREM) for _ in range(20000)]
    lines, size, position = [], 0, 0
    while size < text_target:
        width = rng.choice((60, 72, 78, 120, 400, 990))
        line, length = [], 0
        while True:
            word = words[position % len(words)]
            position += 1
            if length + len(word) + 1 > width:
                break
            line.append(word)
            length += len(word) + 1
        encoded = (" ".join(line) + "\r\n").encode()
        lines.append(encoded)
        size += len(encoded)
    text_part = (("--%s\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                  % boundary).encode() + b"".join(lines) + b"\r\n")
    remaining = total - len(head) - len(text_part) - 300
    raw = rng.randbytes(max(0, remaining * 57 // 78))
    encoded = base64.b64encode(raw)
    b64 = b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"
    attachment = (("--%s\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
                   "Content-Disposition: attachment; filename=\"data.bin\"\r\n"
                   "Content-Transfer-Encoding: base64\r\n\r\n" % boundary).encode() + b64
                  + ("\r\n--%s--\r\n" % boundary).encode())
    message = head + text_part + attachment
    assert max(len(line) for line in message.split(b"\r\n")) <= 998
    assert b"\n" not in message.replace(b"\r\n", b"")
    return message


def measure_memory(vx, sink, port, size_mb):
    """Relay one ~size_mb MIME message through vxgate and read the salmon process's VmHWM."""
    message = big_message(int(size_mb * 1024 * 1024))
    idle = proc_status(vx.pid)
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            status = proc_status(vx.pid)
            if "VmRSS" in status:
                samples.append(status["VmRSS"])
            stop.wait(0.01)
    sampler = threading.Thread(target=sample, daemon=True)
    before_sink = sink.count()
    before_states = vx.states()
    sampler.start()
    started = time.monotonic()
    error = None
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=HOSTNAME, timeout=300) as client:
            client.ehlo()
            refused = client.sendmail(SENDER, [RECIPIENT], message)
            reply = client.noop()
            if refused:
                error = "recipients refused: %r" % refused
    except (OSError, smtplib.SMTPException) as exc:
        error = "%s: %s" % (type(exc).__name__, exc)
    elapsed = time.monotonic() - started
    seen = sink.wait_for(before_sink + 1, 10) - before_sink
    time.sleep(0.3)
    stop.set()
    sampler.join(5)
    after = proc_status(vx.pid)
    states = vx.states()
    result = {
        "message_bytes": len(message),
        "seconds": round(elapsed, 3),
        "idle_rss_bytes": idle.get("VmRSS"),
        "hwm_before_bytes": idle.get("VmHWM"),
        "peak_hwm_bytes": after.get("VmHWM"),
        "peak_sampled_rss_bytes": max(samples) if samples else None,
        "rss_after_bytes": after.get("VmRSS"),
        "sink_received": seen,
        "delivered": states.get("delivered", 0) - before_states.get("delivered", 0),
        "problems": [],
    }
    if after.get("VmHWM"):
        result["peak_multiple"] = round(after["VmHWM"] / len(message), 2)
        result["peak_above_idle_multiple"] = round((after["VmHWM"] - idle["VmRSS"]) / len(message), 2)
    if error:
        result["problems"].append("sending the big message failed: " + error)
    if seen != 1:
        result["problems"].append("sink received %d of 1 big message" % seen)
    if result["delivered"] != 1:
        result["problems"].append("vxgate recorded %d of 1 big message as delivered" % result["delivered"])
    return result


# ------------------------------------------------------------------ report
def print_table(cells, out=sys.stdout):
    header = ("%-6s %-5s %-7s %6s %12s %12s %7s %9s %9s %8s  %s"
              % ("size", "rcpt", "conn", "msgs", "base msg/s", "vxgate msg/s", "ratio", "vx CPU%", "ms CPU/m",
                 "other%", "check"))
    print(header, file=out)
    print("-" * len(header), file=out)
    for cell in cells:
        base, vx = cell["baseline"], cell.get("vxgate") or {}
        ratio = vx.get("rate", float("nan")) / base["rate"] if base.get("rate") else float("nan")
        problems = base["problems"] + vx.get("problems", [])
        other = max(base.get("other_processes_percent", 0), vx.get("other_processes_percent", 0))
        print("%-6s %-5d %-7s %6d %12s %12s %7s %9s %9s %8s  %s" % (
            cell["size_label"], cell["rcpts"], cell["mode"], cell["count"], fmt_rate(base["rate"]),
            fmt_rate(vx.get("rate", float("nan"))), ("%.3f" % ratio) if ratio == ratio else "n/a",
            vx.get("vxgate_cpu_percent", "n/a"), vx.get("vxgate_cpu_ms_per_message", "n/a"),
            "%.0f" % other, "ok" if not problems else "PROBLEM"), file=out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller message counts (300 / 100)")
    parser.add_argument("--sessions", type=int, default=10, help="parallel smtp-source sessions (10)")
    parser.add_argument("--baseline-repeats", type=int, default=3,
                        help="baseline runs per cell; the median is reported (3: a baseline cell lasts well under 1 s)")
    parser.add_argument("--big-mb", type=float, default=30.0, help="size of the memory-probe message in MiB (30)")
    parser.add_argument("--no-memory", action="store_true", help="skip the big-message memory probe")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="vxgate's log level (default: config/logging.conf's, INFO: one line per step)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, log, spool, db)")
    parser.add_argument("--no-metrics", action="store_true",
                        help="MetricsSocket empty (default: /metrics served on a free port, as in production)")
    parser.add_argument("--output", help="JSON path (default bench/results/passthrough-<timestamp>.json)")
    args = parser.parse_args()

    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    cells = [{"size_label": label, "size": size, "rcpts": rcpts, "mode": mode, "count": counts[label]}
             for label, size in SIZES for rcpts in RECIPIENTS for mode, _ in MODES]
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = tempfile.mkdtemp(prefix="vxgate-bench-")
    processes = Processes()
    report = {"benchmark": "passthrough", "started": started_at, "quick": args.quick,
              "log_level": args.log_level or "as config/logging.conf", "metrics": not args.no_metrics,
              "sessions": args.sessions, "baseline_repeats": args.baseline_repeats,
              "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                          "postfix": _postfix_version()},
              "vxgate_commit": git_revision(), "vxgate_source_digest": source_digest(),
              "loadavg_at_start": os.getloadavg(), "reference_msgs_per_s": REFERENCE, "targets": TARGETS,
              "cells": cells, "memory": None, "problems": [], "warnings": []}
    vx = None

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)   # SIGINT too: it is ignored when started in the background
    exit_status = 0
    try:
        sink_port, vx_port = free_port(), free_port()
        while vx_port == sink_port:
            vx_port = free_port()
        sink = Sink(processes, sink_port)
        report["sink"] = {"argv": sink.argv}
        print("smtp-sink on 127.0.0.1:%d; %d sessions; work dir %s" % (sink_port, args.sessions, workdir))
        print("\n== baseline: smtp-source -> smtp-sink (median of %d runs per cell)" % args.baseline_repeats)
        for cell in cells:
            cell["baseline"] = measure_cell("sink", sink_port, sink, cell, args.sessions, processes,
                                            repeats=max(1, args.baseline_repeats))
            print("  %-5s rcpt=%d %-6s %6d msgs  %8s msg/s%s" % (
                cell["size_label"], cell["rcpts"], cell["mode"], cell["count"], fmt_rate(cell["baseline"]["rate"]),
                "  PROBLEM: " + "; ".join(cell["baseline"]["problems"]) if cell["baseline"]["problems"] else ""))

        print("\n== starting vxgate on 127.0.0.1:%d, relaying to the sink" % vx_port)
        metrics = "MetricsSocket =" if args.no_metrics else "MetricsSocket = 127.0.0.1:%d" % free_port()
        vx = Vxgate(processes, os.path.join(workdir, "vxgate"), vx_port, sink_port, max(200, 4 * args.sessions),
                    log_level=args.log_level, maild=metrics)
        report["vxgate"] = {"pid": vx.pid, "greeting": vx.greeting, "config": open(vx.config_path).read()}
        print("  %s (pid %d)" % (vx.greeting, vx.pid))

        if not args.no_memory:
            # First, on the fresh process, so that VmHWM is not raised by the throughput runs.
            print("\n== memory: one %.0f MiB MIME message through vxgate" % args.big_mb)
            memory = measure_memory(vx, sink, vx_port, args.big_mb)
            report["memory"] = memory
            print("  %.1f MiB in %.2fs; salmon RSS idle %.1f MiB, peak (VmHWM) %.1f MiB = %.2fx the message "
                  "(%.2fx above idle)%s" % (
                      mib(memory["message_bytes"]), memory["seconds"], mib(memory["idle_rss_bytes"] or 0),
                      mib(memory["peak_hwm_bytes"] or 0), memory.get("peak_multiple", float("nan")),
                      memory.get("peak_above_idle_multiple", float("nan")),
                      "  PROBLEM: " + "; ".join(memory["problems"]) if memory["problems"] else ""))

        print("\n== vxgate: smtp-source -> vxgate -> smtp-sink")
        for cell in cells:
            cell["vxgate"] = measure_cell("vxgate", vx_port, sink, cell, args.sessions, processes, vx=vx)
            cell["ratio"] = (cell["vxgate"]["rate"] / cell["baseline"]["rate"]
                             if cell["baseline"]["rate"] == cell["baseline"]["rate"] else float("nan"))
            print("  %-5s rcpt=%d %-6s %6d msgs  %8s msg/s  (%.1f%% of baseline, vxgate CPU %s%%)%s" % (
                cell["size_label"], cell["rcpts"], cell["mode"], cell["count"], fmt_rate(cell["vxgate"]["rate"]),
                100 * cell["ratio"], cell["vxgate"].get("vxgate_cpu_percent"),
                "  PROBLEM: " + "; ".join(cell["vxgate"]["problems"]) if cell["vxgate"]["problems"] else ""))
            if vx.proc.poll() is not None:
                raise BenchError("vxgate exited (status %s)\n%s" % (vx.proc.returncode, vx.log_tail()))
        report["vxgate"]["status_after_load"] = proc_status(vx.pid)
    except Interrupted as exc:
        report["problems"].append("interrupted by %s" % exc)
        print("\ninterrupted (%s): stopping everything" % exc, file=sys.stderr)
        exit_status = 130
    except BenchError as exc:
        report["problems"].append(str(exc))
        print("\nERROR: %s" % exc, file=sys.stderr)
        exit_status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)   # let the clean-up finish
        processes.stop_named("smtp-source")   # the load first, so vxgate stops an idle gateway
        if vx is not None:
            # SIGTERM, as `salmon stop` sends it. Sessions waiting for an outcome may hold vxgate up
            # to SmtpReplyTimeout (60 s by default), so allow for that before killing it.
            print("stopping vxgate (SIGTERM)...", flush=True)
            stop_started = time.monotonic()
            status = processes.stop(vx.proc, timeout=VXGATE_STOP_TIMEOUT)
            report["vxgate"]["stop_seconds"] = round(time.monotonic() - stop_started, 2)
            report["vxgate"]["exit_status"] = status
            report["vxgate"]["states_final"] = vx.states()
            counts, examples = vx.log_problems()
            report["vxgate"]["log_problems"] = counts
            report["vxgate"]["log_examples"] = examples
            if status not in (0, None):
                report["problems"].append("vxgate exited with status %s on SIGTERM" % status)
            if counts["ERROR"] or counts["CRITICAL"] or counts["Traceback"]:
                report["problems"].append("vxgate log has errors: %s, e.g. %s" % (counts, examples[:2]))
            leftover = {k: v for k, v in report["vxgate"]["states_final"].items() if k != "delivered"}
            if leftover:
                report["problems"].append("messages not delivered at the end: %s" % leftover)
        processes.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("kept %s" % workdir)

    for cell in cells:
        for side in ("baseline", "vxgate"):
            for problem in (cell.get(side) or {}).get("problems", []):
                report["problems"].append("%s %s rcpt=%d %s: %s" % (side, cell["size_label"], cell["rcpts"],
                                                                    cell["mode"], problem))
    if report["memory"]:
        report["problems"] += ["memory probe: " + p for p in report["memory"]["problems"]]
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["loadavg_at_end"] = os.getloadavg()
    busy = [(c, side, c[side]["other_processes_percent"]) for c in cells for side in ("baseline", "vxgate")
            if c.get(side) and c[side].get("other_processes_percent", 0) > OTHER_CPU_WARNING]
    if busy:
        report["warnings"].append(
            "other processes used the CPU during %d measurement(s) (up to %.0f%% of one core, column other%%): "
            "those figures are low; rerun on a quiet machine" % (len(busy), max(b[2] for b in busy)))
    if report.get("vxgate", {}).get("stop_seconds", 0) > 10:
        report["warnings"].append("vxgate took %.1fs to stop on SIGTERM" % report["vxgate"]["stop_seconds"])

    print("\n== results (%d sessions%s; msg/s; ratio = vxgate / baseline, same run)"
          % (args.sessions, ", --quick" if args.quick else ""))
    if all("baseline" in cell for cell in cells):
        print_table(cells)
    for mode in ("new", "reused"):
        cell = next((c for c in cells if c["size_label"] == "4KB" and c["rcpts"] == 1 and c["mode"] == mode), None)
        if cell and cell.get("vxgate"):
            rate = cell["vxgate"]["rate"]
            print("target 4KB/1 rcpt/%-6s >= %d msg/s: %s (%s)" % (
                mode, TARGETS[mode], fmt_rate(rate), "met" if rate >= TARGETS[mode] else "NOT met"))
    memory = report["memory"]
    if memory and memory.get("peak_multiple"):
        print("target peak memory < %.0fx largest message: %.2fx (%.1f MiB for %.1f MiB) (%s)" % (
            TARGETS["peak_memory_multiple"], memory["peak_multiple"], mib(memory["peak_hwm_bytes"]),
            mib(memory["message_bytes"]),
            "met" if memory["peak_multiple"] < TARGETS["peak_memory_multiple"] else "NOT met"))
    for warning in report["warnings"]:
        print("WARNING: " + warning)
    if report["problems"]:
        print("\nPROBLEMS:")
        for problem in report["problems"]:
            print("  - " + problem)
        exit_status = exit_status or 1
    else:
        print("\nno message lost: every smtp-source run exited 0, the sink counted every message and "
              "vxgate recorded every one as delivered")

    output = args.output or os.path.join(RESULTS_DIR, "passthrough-%s.json" % stamp)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    print("JSON: %s" % os.path.relpath(output, os.getcwd()))
    return exit_status


def _postfix_version():
    try:
        return subprocess.run([tool("postconf"), "-h", "mail_version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, BenchError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
