"""The master of several processes (``Processes`` > 1): one daemon that uses every core.

One Python process reaches about one core (the GIL), so with ``Processes = N`` the process
``salmon start`` runs becomes a master that does no mail work itself. It holds the state lock,
gives the mail of processes no longer started to process 0 (``storage/subnodes.adopt``),
listens on ``SmtpSocket`` (and ``BccSocket``) and starts N processes
(``salmon_app/worker_process.py``) that accept on those same sockets, each a full gateway
with its own stages, Lua runtimes, node name and spool (``storage/subnodes.py``). It waits
until every one has finished its recovery and listens (their systemd-style ``READY=1``,
sent to a socket of the master's), starts again a process that dies (with a growing pause),
forwards SIGHUP and gathers the outcome of each process's reload, serves ``/metrics`` as the
sum of the processes' own, and on SIGTERM stops them all and waits for them. The processes
share the connections evenly through a table the master creates (``salmon_app/shares.py``).
"""
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

from salmon_app import affinity
from salmon_app import reload as reloading
from salmon_app import shares
from salmon_app.receiver import listen
from salmon_app.storage import subnodes

LOG = logging.getLogger("vxgate")
START_TIMEOUT = 300.0     # recovery of a large spool takes a while; progress is logged meanwhile
RELOAD_TIMEOUT = 30.0
# gauges a sum would misstate: the largest value of any process is the answer
_MAX = {"vxgate_oldest_owned_message_age_seconds", "vxgate_storage_failing", "vxgate_build_info"}


class Listening:
    def __init__(self, mode, address, sock):
        self.mode, self.address, self.sock = mode, address, sock


class Child:
    """One process of the set: its slot, its Popen, what it told the master."""

    def __init__(self, slot):
        self.slot = slot
        self.popen = None
        self.ready = threading.Event()
        self.status = ""
        self.metrics_port = 0
        self.started = 0.0
        self.failures = 0
        self.due = 0.0          # when to start it again after it died
        self.reload_due = False  # SIGHUP it once ready

    @property
    def pid(self):
        return self.popen.pid if self.popen else None


class ProcessSet:
    """What ``Service`` runs instead of a Gateway when ``Processes`` > 1 (same verbs)."""

    def __init__(self, config, pid_path, keep_fds=(), interrupted=lambda: False):
        self.config, self.pid_path, self.keep_fds = config, pid_path, [fd for fd in keep_fds if fd is not None]
        self.interrupted = interrupted      # SIGTERM came while the processes start
        self.count = subnodes.count(config)
        self.first_cpu = affinity.first_core()   # PinProcesses: the set's cores begin here, also after a restart
        self.children = [Child(slot) for slot in range(self.count)]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.servers = []
        self.notify = None
        self.shares_fd = self.shares = None     # the sessions each process holds (salmon_app/shares.py)
        self.watcher = None
        self.metrics_server = None
        self.closed = False

    # ------------------------------------------------------------ life cycle
    def start(self):
        self._adopt()
        try:
            self._start()
        except BaseException:
            self.shut_down()
            raise

    def _start(self):
        modes = [("smtp", self.config.SmtpSocket)] + ([("bcc", self.config.BccSocket)] if self.config.BccSocket else [])
        for mode, address in modes:
            self.servers.append(Listening(mode, address, listen(address)))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.notify.bind("\0vxgate-%d-%s" % (os.getpid(), os.urandom(4).hex()))
        self.notify.settimeout(0.5)
        self.shares_fd = shares.create(self.count)
        self.shares = shares.Shares(self.shares_fd, None, self.count)
        for child in self.children:
            self._spawn(child)
        # the processes started later come from this thread; PR_SET_PDEATHSIG follows the
        # thread that started a process, and this one ends only when the master stops them
        self.watcher = threading.Thread(target=self._watch, name="processes", daemon=True)
        self.watcher.start()
        deadline = time.monotonic() + START_TIMEOUT
        for child in self.children:
            while not child.ready.wait(0.5):
                if self.interrupted():
                    raise RuntimeError("a signal asked to stop while the processes started")
                ended = child.popen is None or child.popen.poll() is not None
                if ended or time.monotonic() > deadline:
                    why = child.status or ("not started" if child.popen is None else
                                           "exit status %s" % child.popen.returncode if ended else
                                           "not ready after %ds" % START_TIMEOUT)
                    raise RuntimeError("process %d of %d did not start: %s (its log lines say more)"
                                       % (child.slot, self.count, why))
        LOG.info("processes: %d running (pids %s)", self.count, ", ".join(str(c.pid) for c in self.children))
        if self.config.MetricsSocket:
            self._serve_metrics(self.config.MetricsSocket)

    def _adopt(self):
        """Hand the mail of processes no longer started to process 0, under the node's claim:
        on PostgreSQL a twin daemon of the same name (a copied VM) stops here, before it
        touches a record (``nodelock``)."""
        from salmon_app.storage import engine, models, nodelock
        database = models.open_database(engine.location(self.config), busy_timeout=self.config.DatabaseBusyTimeout,
                                        several=True)
        claim = None
        try:
            claim = nodelock.Claim(database, engine.node_name(self.config))
            subnodes.adopt(self.config, self.count)
        finally:
            if claim is not None:
                claim.release()
            database.close()

    def _spawn(self, child):
        env = {k: v for k, v in os.environ.items()
               if k not in ("VXGATE_PIDFILE", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        fds = {server.mode: server.sock.fileno() for server in self.servers}
        # through a pipe, not the environment: DatabaseUrl may hold a password, and the
        # environment goes on to every process started from there
        values, pipe_in = os.pipe()
        os.write(pipe_in, json.dumps(pinned(self.config)).encode())
        os.close(pipe_in)
        env.update(VXGATE_SLOT=str(child.slot), VXGATE_PROCESSES=str(self.count), VXGATE_LISTEN_FDS=json.dumps(fds),
                   VXGATE_PINNED_FD=str(values), VXGATE_SHARES_FD=str(self.shares_fd),
                   VXGATE_PID_PATH="%s.%d" % (self.pid_path, child.slot), VXGATE_MASTER_PID=str(os.getpid()),
                   VXGATE_FIRST_CPU=str(self.first_cpu if self.first_cpu is not None else ""),
                   NOTIFY_SOCKET="@" + self.notify.getsockname()[1:].decode())
        if self.config.path:
            env["VXGATE_CONFIG"] = os.path.abspath(self.config.path)
        child.ready.clear()
        child.status, child.metrics_port = "", 0
        child.started = time.monotonic()
        try:
            child.popen = subprocess.Popen([sys.executable, "-m", "salmon_app.worker_process"], env=env,
                                           pass_fds=list(fds.values()) + self.keep_fds + [values, self.shares_fd],
                                           stdin=subprocess.DEVNULL)
        finally:
            os.close(values)

    def _watch(self):
        """Read the processes' notifications; start again one that ended while not stopping."""
        while not self.stopping.is_set():
            try:
                self._read_notifications()
                self._restart_ended()
            except Exception:       # this thread must go on: it is the only one that restarts
                LOG.exception("processes: watching failed; trying again")
                time.sleep(1)

    def _restart_ended(self):
        now = time.monotonic()
        for child in self.children:
            if self.stopping.is_set() or (child.popen is not None and child.popen.poll() is None):
                continue
            if not child.due:
                self.shares.mark_gone(child.slot)
                child.failures = 0 if now - child.started > 60 else child.failures + 1
                pause = min(30.0, 2.0 ** child.failures - 1)
                child.due = now + pause
                LOG.error("process %d (pid %s, node %s) ended with %s; starting it again in %.0fs",
                          child.slot, child.pid, subnodes.name(self.node_base(), child.slot),
                          _exit_text(child.popen.returncode) if child.popen else "no start", pause)
            elif now >= child.due:
                child.due = 0.0
                with self.lock:
                    if not self.stopping.is_set():
                        try:
                            self._spawn(child)
                        except OSError as exc:      # no memory, no process slot: later
                            child.popen, child.started = None, now
                            LOG.error("process %d: cannot start it: %s", child.slot, exc)

    def _read_notifications(self):
        try:
            data, ancillary, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except (TimeoutError, OSError):
            return
        pid = next((struct.unpack("3i", cdata[:12])[0] for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
        child = next((c for c in self.children if c.pid == pid), None)
        if child is None:
            return
        for field in data.decode("utf-8", "replace").split("\n"):
            key, _, value = field.partition("=")
            if key == "STATUS":
                child.status = value
            elif key == "VXGATE_METRICS" and value.isdigit():
                child.metrics_port = int(value)
            elif key == "READY":
                child.ready.set()
                if child.reload_due:        # a reload came while it started
                    child.reload_due = False
                    child.popen.send_signal(signal.SIGHUP)

    def node_base(self):
        from salmon_app.storage import engine
        return engine.node_name(self.config)

    def shut_down(self, timeout=30.0):
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.stopping.set()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        running = [c for c in self.children if c.popen and c.popen.poll() is None]
        # a process killed by SIGTERM before its handler is installed ends at once: fine here
        for child in running:
            child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout + 15
        for child in running:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.error("process %d (pid %d) did not stop in time; killing it (its mail resumes at the next "
                          "start)", child.slot, child.pid)
                child.popen.kill()
                child.popen.wait()
        if self.watcher:
            self.watcher.join(5)
        for server in self.servers:
            server.sock.close()
            if server.address.is_unix:
                try:
                    os.unlink(server.address.path)
                except OSError:
                    pass
        if self.notify:
            self.notify.close()
        if self.shares is not None:
            self.shares.close()
            os.close(self.shares_fd)
            self.shares = None
        for child in self.children:
            try:
                os.unlink(reloading.result_path("%s.%d" % (self.pid_path, child.slot)))
            except OSError:
                pass

    # ------------------------------------------------------------ reload
    def reconfigure(self, new):
        """SIGHUP to every process; their outcomes in one (``vxgate reload`` reads it).

        A process started again later reads the file then; what needs a restart it takes from
        the master (``pinned``), as the running ones keep it."""
        asked = time.time()
        _, restart = reloading.changes(self.config, new)
        self.config = new.replace(**{name: getattr(self.config, name) for name in restart})
        # a process still starting may have no SIGHUP handler yet (the signal would end it):
        # it gets the signal once it is ready
        ready = [c for c in self.children if c.ready.is_set() and c.popen and c.popen.poll() is None]
        for child in self.children:
            child.reload_due = child not in ready
        for child in ready:
            child.popen.send_signal(signal.SIGHUP)
        outcomes, missing = [], []
        deadline = time.monotonic() + RELOAD_TIMEOUT
        for child in ready:
            path = "%s.%d" % (self.pid_path, child.slot)
            while True:
                outcome = reloading.read_result(path)
                if outcome and outcome.get("time", 0) >= asked:
                    outcomes.append(outcome)
                    break
                if time.monotonic() > deadline:
                    missing.append(str(child.slot))
                    break
                time.sleep(0.05)
        failed = [o for o in outcomes if not o.get("ok")]
        first = outcomes[0] if outcomes else {"applied": [], "restart_needed": []}
        error = "; ".join([o.get("error", "") for o in failed] +
                          (["process %s did not answer in %ds" % (", ".join(missing), RELOAD_TIMEOUT)] if missing else []))
        return {"time": time.time(), "ok": not error, "applied": first.get("applied", []),
                "restart_needed": restart, "error": error}

    # ------------------------------------------------------------ metrics
    def _serve_metrics(self, address):
        from prometheus_client import CollectorRegistry, start_http_server
        registry = CollectorRegistry()
        registry.register(_Sum(self))
        try:
            self.metrics_server, _ = start_http_server(address.port, address.host, registry=registry)
        except OSError as exc:
            LOG.error("metrics: cannot listen on %s (%s); /metrics is off until the next start", address, exc)
            return
        LOG.info("metrics: listening on %s (/metrics, the sum of %d processes)", address, self.count)

    def scrape(self):
        """Each ready process's /metrics text (a process starting again is left out)."""
        texts = []
        for child in self.children:
            if child.ready.is_set() and child.metrics_port:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % child.metrics_port, timeout=5) as reply:
                        texts.append(reply.read().decode("utf-8"))
                except OSError as exc:
                    LOG.warning("metrics: process %d did not answer: %s", child.slot, exc)
        return texts


class _Sum:
    """The processes' metrics added up: counters, histograms and gauges summed, a few gauges
    (age of the oldest message, storage failing) the largest, info the same in all."""

    def __init__(self, processes):
        self.processes = processes

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.metrics_core import Metric
        from prometheus_client.parser import text_string_to_metric_families
        families, values = {}, {}
        for text in self.processes.scrape():
            for family in text_string_to_metric_families(text):
                families.setdefault(family.name, family)
                for sample in family.samples:
                    key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                    if key not in values:
                        values[key] = sample.value
                    elif sample.name.endswith("_created"):      # when the first process began counting
                        values[key] = min(values[key], sample.value)
                    elif family.name in _MAX or family.type == "info":
                        values[key] = max(values[key], sample.value)
                    else:
                        values[key] += sample.value
        for name, family in families.items():
            merged = Metric(name, family.documentation, family.type)
            for (owner, sample_name, labels), value in values.items():
                if owner == name:
                    merged.add_sample(sample_name, dict(labels), value)
            yield merged


def pinned(config):
    """{name: value} (JSON) of the values a restart takes (reload.RESTART_NEEDED): a process
    started again runs with the master's, whatever the file says now. The node's name as the
    master worked it out: a host renamed meanwhile must not move a process's spool to
    another node's records."""
    from salmon_app.config import SocketAddr
    from salmon_app.storage import engine
    values = {name: getattr(config, name) for name in reloading.RESTART_NEEDED}
    values["NodeName"] = engine.node_name(config)
    return {name: ["socket", str(value)] if isinstance(value, SocketAddr) else value for name, value in values.items()}


def unpinned(values):
    """The values ``pinned`` wrote, read back."""
    from salmon_app.config import parse_socket
    return {name: parse_socket(value[1]) if isinstance(value, list) else value for name, value in values.items()}


def _exit_text(code):
    if code is not None and code < 0:
        try:
            return "signal %s" % signal.Signals(-code).name
        except ValueError:
            return "signal %d" % -code
    return "exit status %s" % code
