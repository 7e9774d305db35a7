#!/usr/bin/env python3
"""Pass-through benchmark: vxgate against the filters an administrator would compare it with.

One run starts a private ``smtp-sink`` on a free loopback port and, relaying to it, the
targets: smtp-source -> smtp-sink directly; a bare threaded durable Python filter
(``bench/barefilter.py``: tmp file, fsync, rename, directory fsync, relay, 250, unlink);
amavisd-new as a pass-through filter when it is installed (skipped with the reason
otherwise); and vxgate (``salmon start --no-daemon``, default hook, no vxCube, durability on),
each with its own spool in a temporary directory. It first relays one ~30 MB MIME message
through vxgate and reports its peak memory (VmHWM) as a multiple of the message size, then
sends the issue's loads through every target, interleaved (each repetition runs every load
through every target in turn), and reports medians with the CPU time per message of the
filter's process tree beside every rate.

Loads (``smtp-source``, 10 parallel sessions, no pipelining): 4 KB with a new connection per
message, 4 KB over reused connections (``-d``), 4 KB new connection 5 recipients, 100 KB
reused; ``--all-loads`` runs the whole 4 KB / 100 KB x 1 / 5 recipients x new / reused matrix.

Every message is accounted for: the sink's own counter (``smtp-sink -c``) must grow by exactly
the number smtp-source sent, smtp-source must exit 0 (it aborts on any reply that is not the
expected 2xx/3xx), vxgate's database must record every message as delivered and the bare
filter's spool must be empty at the end.

Usage (from the repo root):  make bench [ARGS="--quick"], or <venv>/bin/python bench/passthrough.py [--quick]
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

# The loads of issue 14's table: (size label, bytes, recipients, connection).
ISSUE_LOADS = [("4KB", 4 * 1024, 1, "new"), ("4KB", 4 * 1024, 1, "reused"), ("4KB", 4 * 1024, 5, "new"),
               ("100KB", 100 * 1024, 1, "reused")]
# The issue's figures (msg/s, 2 cores, 10 sessions), for the JSON: same order as ISSUE_LOADS.
ISSUE_FIGURES = {"direct": [10820, 24235, 9008, 3875], "amavis": [306, 533, 242, 40],
                 "bare": [732, 1246, 516, 473], "vxgate": [292, 420, 270, 272]}
PEAK_MEMORY_MULTIPLE = 4.0
VXGATE_STOP_TIMEOUT = 90.0
OTHER_CPU_WARNING = 20.0   # percent of one core used by processes that are not part of the benchmark


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


def children(pid):
    """The child processes of every thread of ``pid`` (a master starts them from its threads)."""
    found = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as handle:
                found += [int(child) for child in handle.read().split()]
    except OSError:
        pass
    return found


def descendants(pid):
    """Every live process below ``pid``: with Processes > 1 the hook processes are the children
    of the mail processes, which are the master's."""
    found, todo = [], children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(child)
    return found


def tree_cpu_seconds(pid):
    """cpu_seconds of ``pid`` and of every live process below it (vxgate's hook processes run
    the Lua; until 2026-12-03 those of a set's mail processes were left out, and counted among
    "other processes")."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in descendants(pid))


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
                 maild="", root="", source=REPO):
        # ``source``: the tree whose salmon_app/config run (another checkout: a before/after in
        # one run), with this venv's interpreter and packages
        self.workdir, self.port, self.source = workdir, port, source
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
        with open(os.path.join(source, "config", "logging.conf")) as handle:
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
        if source != REPO:
            env["PYTHONPATH"] = source
        self.stderr_path = os.path.join(workdir, "salmon.stderr")
        self._stderr = open(self.stderr_path, "wb")
        # the venv of the interpreter running the benchmark (``make bench``: .venv-bench), so
        # that vxgate and the bare filter run on the same interpreter
        salmon = os.path.join(os.path.dirname(sys.executable), "salmon")
        if not os.path.exists(salmon):
            salmon = os.path.join(REPO, ".venv", "bin", "salmon")
        argv = [salmon, "start", "--pid", self.pid_path, "--no-daemon"]
        self.proc = processes.start("vxgate", argv, stop_signal=signal.SIGTERM, cwd=source, env=env,
                                    stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            self.greeting = wait_for_smtp(port, self.proc, 60, "vxgate")
        except BenchError:
            self._stderr.flush()
            raise BenchError("%s\n--- salmon output ---\n%s\n--- log tail ---\n%s"
                             % (sys.exc_info()[1], self.output_tail(), self.log_tail()))

    def mail_pids(self):
        """The processes that take mail: salmon's, or with Processes > 1 the ones it started."""
        workers = []
        for child in children(self.pid):
            try:
                with open("/proc/%d/cmdline" % child, "rb") as handle:
                    if b"worker_process" in handle.read():
                        workers.append(child)
            except OSError:
                pass
        return workers or [self.pid]

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


# ------------------------------------------------------------------ the other filters
class Barefilter:
    """bench/barefilter.py under this script's interpreter (the one vxgate's venv runs)."""

    def __init__(self, processes, workdir, port, relay_port, core=None):
        # ``core``: run it on that CPU core alone, as vxgate's PinProcesses keeps each of its
        # processes (the same cure for the same interpreter lock: a fair "what Python can do")
        self.port = port
        os.makedirs(workdir, exist_ok=True)
        self.spool = os.path.join(workdir, "spool")
        self.output_path = os.path.join(workdir, "barefilter.out")
        self._output = open(self.output_path, "wb")
        argv = [sys.executable, os.path.join(REPO, "bench", "barefilter.py"), str(port), str(relay_port), self.spool]
        if core is not None:
            argv = ["taskset", "-c", str(core)] + argv     # util-linux
        self.proc = processes.start("barefilter", argv, stdin=subprocess.DEVNULL, stdout=self._output,
                                    stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        wait_for_smtp(port, self.proc, 30, "barefilter")

    def leftover_files(self):
        """Message files still in the spool (each relayed message's file is unlinked)."""
        return sum(len(files) for _, _, files in os.walk(self.spool))


def amavis_binary():
    for name in ("amavisd", "amavisd-new"):
        for folder in SBIN:
            path = os.path.join(folder, name)
            if os.access(path, os.X_OK):
                return path
    return None


AMAVIS_CONFIG = """\
# Written by vxgate's bench/passthrough.py: amavisd-new as a pure pass-through content filter
# (no virus scanners, no SpamAssassin, no decoders, no database), forwarding to smtp-sink.
use strict;
$daemon_user = 'amavis';
$daemon_group = 'amavis';
$MYHOME = '%(home)s';
$TEMPBASE = '%(home)s/tmp';
$db_home = '%(home)s';
$helpers_home = '%(home)s';
$pid_file = '%(home)s/amavisd.pid';
$lock_file = '%(home)s/amavisd.lock';
$QUARANTINEDIR = undef;
$mydomain = 'bench.example';
$myhostname = 'amavis.bench.example';
$max_servers = %(children)d;
$max_requests = 1000000;    # no child recycling during a run: its CPU time would be lost
$child_timeout = 300;
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = %(port)d;
@inet_acl = qw(127.0.0.1);
$forward_method = 'smtp:[127.0.0.1]:%(relay_port)d';
$notify_method = $forward_method;
$enable_db = 0;
$enable_zmq = 0;
$enable_global_cache = 0;
$nanny_details_level = 0;
$DO_SYSLOG = 0;
$LOGFILE = '%(home)s/amavis.log';
$log_level = 0;
@local_domains_maps = (1);
@bypass_virus_checks_maps = (1);
@bypass_spam_checks_maps = (1);
@bypass_banned_checks_maps = (1);
@bypass_header_checks_maps = (1);
@av_scanners = ();
@av_scanners_backup = ();
@spam_scanners = ();
@decoders = ();
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
1;
"""


class Amavis:
    """amavisd-new started by hand (``amavisd -c CONFIG foreground``) with a config of ours.

    amavisd refuses a config file its own user could change, so the config lives in a
    root-owned folder; the daemon drops to the ``amavis`` user Debian's package created,
    whose home here is a temporary folder it owns. Debian's service is never used."""

    @staticmethod
    def unavailable():
        """Why amavisd-new cannot be measured here, or None."""
        binary = amavis_binary()
        if not binary:
            return "amavisd-new is not installed (bench/README.md: how to install it without its service)"
        if os.geteuid() != 0:
            return "amavisd-new needs the benchmark to run as root (it drops to the amavis user)"
        try:
            import pwd
            pwd.getpwnam("amavis")
        except KeyError:
            return "no amavis user (Debian's amavisd-new package creates it)"
        return None

    def __init__(self, processes, workdir, port, relay_port, children=2):
        import pwd
        amavis = pwd.getpwnam("amavis")
        self.port = port
        os.makedirs(workdir, exist_ok=True)
        os.chmod(workdir, 0o755)      # the caller makes the folders above it traversable too
        conf_dir = os.path.join(workdir, "conf")
        home = os.path.join(workdir, "home")
        for path in (conf_dir, home, os.path.join(home, "tmp")):
            os.makedirs(path, exist_ok=True)
        os.chmod(conf_dir, 0o755)
        for path in (home, os.path.join(home, "tmp")):
            os.chown(path, amavis.pw_uid, amavis.pw_gid)
        self.config_path = os.path.join(conf_dir, "amavisd.conf")
        self.log_path = os.path.join(home, "amavis.log")
        with open(self.config_path, "w") as handle:
            handle.write(AMAVIS_CONFIG % {"home": home, "port": port, "relay_port": relay_port, "children": children})
        os.chmod(self.config_path, 0o644)
        self.output_path = os.path.join(workdir, "amavisd.out")
        self._output = open(self.output_path, "wb")
        self.argv = [amavis_binary(), "-c", self.config_path, "foreground"]
        self.proc = processes.start("amavisd", self.argv, cwd=home, stdin=subprocess.DEVNULL, stdout=self._output,
                                    stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            wait_for_smtp(port, self.proc, 60, "amavisd")
        except BenchError:
            raise BenchError("%s\n%s" % (sys.exc_info()[1], self.log_tail()))
        self.version = ""
        with open(self.log_path, errors="replace") as handle:
            found = re.search(r"amavis-([\d.]+)", handle.read(4096))
            self.version = found.group(1) if found else ""

    def log_tail(self, size=3000):
        text = ""
        for path in (self.output_path, self.log_path):
            try:
                with open(path, "rb") as handle:
                    text += handle.read()[-size:].decode("utf-8", "replace")
            except OSError:
                pass
        return text


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


def measure_run(port, sink, cell, sessions, processes, cpu_pid, vx=None):
    """One smtp-source run of ``cell`` into ``port``; ``cpu_pid``'s process tree is the one whose
    CPU time is charged to the messages (the filter; the sink itself for the direct path)."""
    before_sink = sink.count()
    before_states = vx.states() if vx else None
    before_cpu = tree_cpu_seconds(cpu_pid)
    # Generous but bounded: no cell may hang the benchmark.
    timeout = max(120, cell["count"] // 5)
    meter = CpuMeter(lambda: (sink.proc.pid, cpu_pid))
    meter.start()
    elapsed, status, text = run_source(port, cell["count"], cell["size"], cell["rcpts"],
                                       cell["mode"] == "reused", sessions, processes, timeout)
    cpu = tree_cpu_seconds(cpu_pid) - before_cpu
    expected = before_sink + cell["count"]
    # a filter answers only after relaying, so the sink has everything already; allow a moment.
    seen = sink.wait_for(expected, 5 if status == 0 else 2) - before_sink
    run = {"seconds": round(elapsed, 4), "rate": cell["count"] / elapsed if elapsed > 0 else float("nan"),
           "source_status": status, "sink_received": seen, "cpu_seconds": round(cpu, 3)}
    run.update(meter.stop())
    if text:
        run["source_output"] = text[-2000:]
    problems = []
    if status != 0:
        problems.append("smtp-source status %s: %s" % (status, text[-300:]))
    if seen != cell["count"]:
        problems.append("sink received %d of %d messages" % (seen, cell["count"]))
    if vx:
        after = vx.states()
        run["delivered"] = after.get("delivered", 0) - before_states.get("delivered", 0)
        run["states_after"] = after
        if run["delivered"] != cell["count"]:
            problems.append("vxgate recorded %d of %d messages as delivered (states now: %s)"
                            % (run["delivered"], cell["count"], run["states_after"]))
        if vx.proc.poll() is not None:
            problems.append("vxgate exited with status %s" % vx.proc.returncode)
    run["problems"] = problems
    return run


def summarise(runs, count):
    """The median rate of the runs without problems, and CPU per message over all runs."""
    rates = [r["rate"] for r in runs if not r["problems"]]
    cpu = sum(r["cpu_seconds"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    return {"runs": runs, "rate": statistics.median(rates) if rates else float("nan"),
            "rate_min": min(rates) if rates else float("nan"), "rate_max": max(rates) if rates else float("nan"),
            "problems": [p for r in runs for p in r["problems"]],
            "other_processes_percent": max(r["other_processes_percent"] for r in runs),
            "cpu_percent": round(100 * cpu / seconds, 1) if seconds else float("nan"),
            "cpu_ms_per_message": round(1000 * cpu / (count * len(runs)), 3)}


def measure_cell(target, port, sink, cell, sessions, processes, vx=None, repeats=1):
    """Send one cell's messages ``repeats`` times into one target; returns the measurement dict
    (bench/policy_vxcube.py measures vxgate this way)."""
    runs = []
    for _ in range(repeats):
        runs.append(measure_run(port, sink, cell, sessions, processes, vx.pid if vx else sink.proc.pid, vx=vx))
        if runs[-1]["problems"]:
            break
    result = summarise(runs, cell["count"])
    if vx:
        result["vxgate_cpu_percent"] = result["cpu_percent"]
        result["vxgate_cpu_ms_per_message"] = result["cpu_ms_per_message"]
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
    idle = {pid: proc_status(pid) for pid in vx.mail_pids()}
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss = [proc_status(pid).get("VmRSS", 0) for pid in idle]
            if any(rss):
                samples.append(max(rss))
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
    # the process that took the message is the one whose peak grew most
    grown = {pid: proc_status(pid) for pid in idle}
    pid = max(grown, key=lambda p: grown[p].get("VmHWM", 0) - idle[p].get("VmHWM", 0))
    after, idle = grown[pid], idle[pid]
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
def load_label(cell):
    return "%s %s%s" % (cell["size_label"], cell["mode"], " %d rcpt" % cell["rcpts"] if cell["rcpts"] > 1 else "")


def ratio(cell, top, bottom):
    results = cell["results"]
    if top not in results or bottom not in results:
        return float("nan")
    a, b = results[top]["rate"], results[bottom]["rate"]
    return a / b if b == b and b and a == a else float("nan")


def print_table(cells, targets, out=sys.stdout):
    """The issue's table: msg/s (CPU ms per message) per target and load, then the ratios."""
    first = 42
    width = max(22, max(len(load_label(c)) for c in cells) + 2)
    print("%-*s" % (first, "msg/s (CPU ms/msg)") + "".join("%*s" % (width, load_label(c)) for c in cells), file=out)
    print("-" * (first + width * len(cells)), file=out)
    for target in targets:
        row = "%-*s" % (first, target["label"][:first - 1])
        for cell in cells:
            result = cell["results"].get(target["name"])
            if result is None:
                text = "skipped"
            else:
                text = "%s (%.1f)%s" % (fmt_rate(result["rate"]), result["cpu_ms_per_message"],
                                        "!" if result["problems"] else "")
            row += "%*s" % (width, text)
        print(row, file=out)
    names = {t["name"] for t in targets}
    for vx in [t for t in targets if t["kind"] == "vxgate"]:
        for other, what in (("amavis", "amavisd-new"), ("bare", "bare filter"), ("bare1", "bare, one core")):
            if other in names:
                print("%-*s" % (first, "%s / %s" % (vx["name"], what))
                      + "".join("%*s" % (width, "%.2f" % ratio(c, vx["name"], other)) for c in cells), file=out)
    print("%-*s" % (first, "other processes, % of a core (max)")
          + "".join("%*.0f" % (width, max((r.get("other_processes_percent", 0) for r in c["results"].values()),
                                         default=0)) for c in cells), file=out)
    print("(CPU: the filter's process and its children per message; for the direct path, smtp-sink's; "
          "'!' marks a cell with a problem)", file=out)


def goals(cells, vx_name="vxgate"):
    """The issue's goals, as (text, met) lines for the cells that were measured."""
    lines = []
    for cell in cells:
        bare, amavis = ratio(cell, vx_name, "bare"), ratio(cell, vx_name, "amavis")
        need = 0.8 if cell["size_label"] == "100KB" else 0.7
        if bare == bare:
            lines.append(("%s %s / bare filter >= %.1f: %.2f" % (load_label(cell), vx_name, need, bare), bare >= need))
        if cell["size_label"] == "4KB" and cell["rcpts"] == 1 and amavis == amavis:
            lines.append(("%s %s / amavisd-new >= 2: %.2f" % (load_label(cell), vx_name, amavis), amavis >= 2))
    return lines


def interpreter():
    """The Python every Python target runs on: the one running the benchmark."""
    with open("/proc/self/maps") as handle:
        shared = any("libpython" in line for line in handle)
    return {"executable": sys.executable, "base": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
            "version": platform.python_version(), "libpython_shared": shared}


def describe_interpreter(info):
    return "%s (Python %s, %s)" % (info["base"], info["version"], "libpython shared: --enable-shared"
                                   if info["libpython_shared"] else "libpython linked in")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller message counts (300 / 100), one repetition")
    parser.add_argument("--sessions", type=int, default=10, help="parallel smtp-source sessions (10)")
    parser.add_argument("--repeats", "--baseline-repeats", type=int, default=None,
                        help="interleaved repetitions of every load and target; medians reported (3; --quick: 1)")
    parser.add_argument("--all-loads", action="store_true",
                        help="the whole matrix (4 KB / 100 KB x 1 / 5 recipients x new / reused) instead of "
                             "the issue's four loads")
    parser.add_argument("--only", help="comma-separated targets to run: direct,bare,amavis,vxgate (default: "
                                       "those), bare1 (the bare filter on one core, with taskset)")
    parser.add_argument("--vxgate", action="append", default=[], metavar="NAME=DIR",
                        help="also measure the vxgate of another checkout DIR (e.g. a `git worktree` of an "
                             "older commit), as row NAME; with this venv's packages")
    parser.add_argument("--processes", type=int, default=0,
                        help="vxgate's Processes (0, one per core: what the README tells a site to run)")
    parser.add_argument("--amavis-children", type=int, default=2, help="amavisd-new's $max_servers (2)")
    parser.add_argument("--big-mb", type=float, default=30.0, help="size of the memory-probe message in MiB (30)")
    parser.add_argument("--no-memory", action="store_true", help="skip the big-message memory probe")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="vxgate's log level (default: config/logging.conf's, INFO)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, log, spool, db)")
    parser.add_argument("--no-metrics", action="store_true",
                        help="MetricsSocket empty (default: /metrics served on a free port, as in production)")
    parser.add_argument("--output", help="JSON path (default bench/results/passthrough-<timestamp>.json)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    only = set((args.only or "direct,bare,amavis,vxgate").split(","))
    extra = []
    for spec in args.vxgate:
        name, _, folder = spec.partition("=")
        folder, _, count = folder.partition("@")
        if not name or not os.path.isdir(os.path.join(folder, "salmon_app")) or not (count or "0").isdigit():
            parser.error("--vxgate wants NAME=DIR or NAME=DIR@PROCESSES, DIR a vxgate checkout (with salmon_app/): %r"
                         % spec)
        extra.append((name, os.path.abspath(folder), int(count) if count else args.processes))

    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    loads = [(label, size, rcpts, mode) for label, size in SIZES for rcpts in RECIPIENTS for mode, _ in MODES] \
        if args.all_loads else ISSUE_LOADS
    cells = [{"size_label": label, "size": size, "rcpts": rcpts, "mode": mode, "count": counts[label],
              "results": {}} for label, size, rcpts, mode in loads]
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = tempfile.mkdtemp(prefix="vxgate-bench-")
    os.chmod(workdir, 0o711)     # amavisd-new runs as its own user below it
    processes = Processes()
    report = {"benchmark": "passthrough", "started": started_at, "quick": args.quick,
              "log_level": args.log_level or "as config/logging.conf", "metrics": not args.no_metrics,
              "sessions": args.sessions, "repeats": repeats, "interleaved": True,
              "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                          "interpreter": interpreter(), "postfix": _postfix_version()},
              "vxgate_commit": git_revision(), "vxgate_source_digest": source_digest(),
              "loadavg_at_start": os.getloadavg(), "issue_figures_msgs_per_s": ISSUE_FIGURES,
              "cells": cells, "targets": [], "memory": None, "problems": [], "warnings": [], "skipped": {}}
    vxgates = []

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)   # SIGINT too: it is ignored when started in the background
    exit_status = 0
    targets = []
    try:
        used = set()

        def port():
            number = free_port()
            while number in used:
                number = free_port()
            used.add(number)
            return number
        sink_port = port()
        sink = Sink(processes, sink_port)
        report["sink"] = {"argv": sink.argv}
        print("smtp-sink on 127.0.0.1:%d; %d sessions; work dir %s" % (sink_port, args.sessions, workdir))
        print("interpreter (vxgate and the bare filter): %s" % describe_interpreter(report["machine"]["interpreter"]))
        if "direct" in only:
            targets.append({"name": "direct", "kind": "direct", "label": "smtp-source -> smtp-sink directly",
                            "port": sink_port, "cpu_pid": sink.proc.pid})
        if "amavis" in only:
            why = Amavis.unavailable()
            if why:
                report["skipped"]["amavis"] = why
                print("amavisd-new: skipped: %s" % why)
            else:
                amavis = Amavis(processes, os.path.join(workdir, "amavis"), port(), sink_port, args.amavis_children)
                targets.append({"name": "amavis", "kind": "amavis", "port": amavis.port, "cpu_pid": amavis.pid,
                                "label": "amavisd-new %s, pass-through, %d ch." % (amavis.version, args.amavis_children),
                                "process": amavis.proc, "argv": amavis.argv, "config": open(amavis.config_path).read()})
                print("amavisd-new %s on 127.0.0.1:%d (pid %d)" % (amavis.version, amavis.port, amavis.pid))
        if "bare" in only:
            bare = Barefilter(processes, os.path.join(workdir, "bare"), port(), sink_port)
            targets.append({"name": "bare", "kind": "bare", "port": bare.port, "cpu_pid": bare.pid, "filter": bare,
                            "label": "bare threaded Python fsync filter", "process": bare.proc})
            print("bare filter on 127.0.0.1:%d (pid %d)" % (bare.port, bare.pid))
        if "bare1" in only:
            bare1 = Barefilter(processes, os.path.join(workdir, "bare1"), port(), sink_port,
                               core=sorted(os.sched_getaffinity(0))[0])
            targets.append({"name": "bare1", "kind": "bare", "port": bare1.port, "cpu_pid": bare1.pid,
                            "filter": bare1, "label": "bare filter on one core (taskset)", "process": bare1.proc})
            print("bare filter on one core on 127.0.0.1:%d (pid %d)" % (bare1.port, bare1.pid))
        metrics = (lambda: "MetricsSocket =") if args.no_metrics else (lambda: "MetricsSocket = 127.0.0.1:%d" % port())
        for name, source, count in ([("vxgate", REPO, args.processes)] if "vxgate" in only else []) + extra:
            vx = Vxgate(processes, os.path.join(workdir, name), port(), sink_port, max(200, 4 * args.sessions),
                        log_level=args.log_level, maild=metrics(), source=source, root="Processes = %d" % count)
            vxgates.append((name, vx))
            targets.append({"name": name, "kind": "vxgate", "port": vx.port, "cpu_pid": vx.pid, "vx": vx,
                            "process": vx.proc, "source": source,
                            "label": "vxgate (default hook, no vxCube)" if name == "vxgate" else "vxgate %s" % name,
                            "config": open(vx.config_path).read()})
            print("%s: %s (pid %d, %s)" % (name, vx.greeting, vx.pid, source))
        report["targets"] = [{k: v for k, v in t.items() if k not in ("process", "vx", "filter")} for t in targets]

        if vxgates and not args.no_memory:
            # First, on the fresh process, so that VmHWM is not raised by the throughput runs.
            name, vx = vxgates[0]
            print("\n== memory: one %.0f MiB MIME message through %s" % (args.big_mb, name))
            memory = measure_memory(vx, sink, vx.port, args.big_mb)
            report["memory"] = memory
            print("  %.1f MiB in %.2fs; salmon RSS idle %.1f MiB, peak (VmHWM) %.1f MiB = %.2fx the message "
                  "(%.2fx above idle)%s" % (
                      mib(memory["message_bytes"]), memory["seconds"], mib(memory["idle_rss_bytes"] or 0),
                      mib(memory["peak_hwm_bytes"] or 0), memory.get("peak_multiple", float("nan")),
                      memory.get("peak_above_idle_multiple", float("nan")),
                      "  PROBLEM: " + "; ".join(memory["problems"]) if memory["problems"] else ""))

        print("\n== %d interleaved repetition(s): every load through every target in turn" % repeats)
        runs = {(id(c), t["name"]): [] for c in cells for t in targets}
        for repetition in range(repeats):
            for cell in cells:
                # the order of the targets turns with each repetition: none always runs first
                shift = repetition % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    run = measure_run(target["port"], sink, cell, args.sessions, processes, target["cpu_pid"],
                                      vx=target.get("vx"))
                    runs[(id(cell), target["name"])].append(run)
                    print("  %d/%d %-20s %-10s %7s msg/s %6.2f ms CPU/msg%s" % (
                        repetition + 1, repeats, load_label(cell), target["name"], fmt_rate(run["rate"]),
                        1000 * run["cpu_seconds"] / cell["count"],
                        "  PROBLEM: " + "; ".join(run["problems"]) if run["problems"] else ""), flush=True)
                    process = target.get("process")
                    if process is not None and process.poll() is not None:
                        raise BenchError("%s exited (status %s)" % (target["name"], process.returncode))
        for cell in cells:
            for target in targets:
                cell["results"][target["name"]] = summarise(runs[(id(cell), target["name"])], cell["count"])
        for name, vx in vxgates:
            report.setdefault("vxgate_status_after_load", {})[name] = proc_status(vx.pid)
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
        for name, vx in vxgates:
            # SIGTERM, as `salmon stop` sends it. Sessions waiting for an outcome may hold vxgate up
            # to SmtpReplyTimeout (60 s by default), so allow for that before killing it.
            print("stopping %s (SIGTERM)..." % name, flush=True)
            stop_started = time.monotonic()
            status = processes.stop(vx.proc, timeout=VXGATE_STOP_TIMEOUT)
            end = report.setdefault("vxgate_end", {})[name] = {
                "stop_seconds": round(time.monotonic() - stop_started, 2), "exit_status": status,
                "states_final": vx.states()}
            counts, examples = vx.log_problems()
            end.update(log_problems=counts, log_examples=examples)
            if status not in (0, None):
                report["problems"].append("%s exited with status %s on SIGTERM" % (name, status))
            if counts["ERROR"] or counts["CRITICAL"] or counts["Traceback"]:
                report["problems"].append("%s log has errors: %s, e.g. %s" % (name, counts, examples[:2]))
            leftover = {k: v for k, v in end["states_final"].items() if k != "delivered"}
            if leftover:
                report["problems"].append("%s: messages not delivered at the end: %s" % (name, leftover))
            if end["stop_seconds"] > 10:
                report["warnings"].append("%s took %.1fs to stop on SIGTERM" % (name, end["stop_seconds"]))
        for target in targets:
            if target["kind"] == "bare" and target["filter"].leftover_files():
                report["problems"].append("bare filter: %d message files left in its spool"
                                          % target["filter"].leftover_files())
        processes.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("kept %s" % workdir)

    for cell in cells:
        for name, result in cell["results"].items():
            for problem in result["problems"]:
                report["problems"].append("%s %s: %s" % (name, load_label(cell), problem))
    if report["memory"]:
        report["problems"] += ["memory probe: " + p for p in report["memory"]["problems"]]
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["loadavg_at_end"] = os.getloadavg()
    busy = [r["other_processes_percent"] for c in cells for r in c["results"].values()
            if r["other_processes_percent"] > OTHER_CPU_WARNING]
    if busy:
        report["warnings"].append(
            "other processes used the CPU during %d measurement(s) (up to %.0f%% of one core): those figures "
            "are low; rerun on a quiet machine" % (len(busy), max(busy)))

    print("\n== results (%d sessions, median of %d interleaved run(s)%s; %s)"
          % (args.sessions, repeats, ", --quick" if args.quick else "",
             describe_interpreter(report["machine"]["interpreter"])))
    if cells and all(c["results"] for c in cells):
        print_table(cells, targets)
        report["goals"] = {}
        for name, _ in vxgates:
            for text, met in goals(cells, name):
                report["goals"][text] = met
                print("goal: %s (%s)" % (text, "met" if met else "NOT met"))
    for name, why in report["skipped"].items():
        print("skipped %s: %s" % (name, why))
    memory = report["memory"]
    if memory and memory.get("peak_multiple"):
        print("goal: peak memory < %.0fx largest message: %.2fx (%.1f MiB for %.1f MiB) (%s)" % (
            PEAK_MEMORY_MULTIPLE, memory["peak_multiple"], mib(memory["peak_hwm_bytes"]),
            mib(memory["message_bytes"]), "met" if memory["peak_multiple"] < PEAK_MEMORY_MULTIPLE else "NOT met"))
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
