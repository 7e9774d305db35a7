"""The check stage's seam: analysis (vxCube) and the policy decision (the Lua hook).

``analyse()`` returns the analysis of a message, or None while analyses are pending (the
message then re-enters the check stage when they finish). ``decide()`` runs ``SmtpHook`` in
a hook process (``policy.process``): a Lua runtime in a child process of its own, which a
check worker takes from this process's pool for one message and gives back (a Lua state is
not thread-safe, so one message at a time). There are as many hook processes as check
workers, so a runaway hook, even one stuck in a single C call or a Python callback, holds one
of them for at most ``SmtpHookTimeout`` plus half a second and never makes another worker
wait. The pool hands out the one given back last, and a worker even waits a moment for that
one when it is out but due back within ``WARM_WAIT`` (going by how long calls take of late):
under usual load one hook process then answers most messages with its caches warm,
where one per worker in turn each ran cold (a fifth less CPU in the hook processes,
bench/README.md); slow hooks still run side by side. Without a hook every message is
accepted unchanged."""
import logging
import threading
import time

from salmon_app.policy import Decision, Envelope, HookError
from salmon_app.policy.context import MessageFile
from salmon_app.policy.process import HookProcess

LOG = logging.getLogger("vxgate.policy")
WARM_WAIT = 0.005    # seconds a worker may wait for the warm hook process (a runaway hook holds it far longer)


class Checks:
    def __init__(self, gateway):
        from salmon_app.analysis import Analyser
        self.gateway = gateway
        self.analyser = Analyser(gateway)
        self.generation = 0          # bumped by reload(): every hook process re-reads its hook
        self.processes = set()       # every hook process of the pool, stopped at shut-down
        self.idle = []               # those no worker holds now, the last given back on top
        self.warm = None             # the hook process given back last, whose caches are warm
        self.warm_taken = 0.0        # when a worker took it (time.monotonic)
        self.call_time = 0.0         # seconds a hook call took of late (a moving average)
        self.lock = threading.Condition()
        self.last_good = None

    def analyse(self, message):
        return self.analyser.analyse(message)

    def _spec(self):
        config = self.gateway.config
        return (config.SmtpHook, config.SmtpHookMemory, config.SmtpHookTimeout, config.SmtpHookErrorAction,
                config.SmtpHookLists)

    def take(self):
        """A hook process of the pool for one message, up to date (None without a hook); give it
        back with ``give_back``. A new one is started when every other is held."""
        if not self.gateway.config.SmtpHook:
            return None
        spec = self._spec()
        with self.lock:
            if self.warm is not None and self.warm not in self.idle and \
                    self.call_time - (time.monotonic() - self.warm_taken) < WARM_WAIT:
                self.lock.wait_for(lambda: self.warm in self.idle, WARM_WAIT)
            if self.warm in self.idle:
                self.idle.remove(self.warm)     # on top, as a rule: a cheap remove
                runtime, self.warm_taken = self.warm, time.monotonic()
            else:
                runtime = self.idle.pop() if self.idle else None
        if runtime is not None and runtime.vx_spec != spec:
            # a reload changed the hook or its limits: build it afresh
            runtime = self._new_runtime(runtime)
        elif runtime is None:
            runtime = self._new_runtime()
        elif runtime.vx_generation != self.generation:
            runtime.vx_generation = self.generation
            runtime.reload()
        if runtime.source:
            self.last_good = runtime.source
        return runtime

    def give_back(self, runtime, seconds=None):
        """Return a hook process to the pool; ``seconds``: how long its hook call took."""
        with self.lock:
            if runtime in self.processes:      # not stopped by shut_down meanwhile
                self.idle.append(runtime)
                self.warm = runtime
                self.lock.notify_all()
            if seconds is not None:
                self.call_time += (seconds - self.call_time) / 16

    def prepare(self):
        """A check worker's first step: one more hook process ready in the pool (one per
        worker, so that no message waits for one to start)."""
        if self.gateway.config.SmtpHook:
            runtime = self._new_runtime()
            with self.lock:     # at the bottom: the warm one on top stays in use
                if runtime in self.processes:
                    self.idle.insert(0, runtime)

    def _new_runtime(self, previous=None):
        config = self.gateway.config
        spec, generation = self._spec(), self.generation
        options = dict(memory_limit=config.SmtpHookMemory, time_limit=config.SmtpHookTimeout,
                       on_error=config.SmtpHookErrorAction.lower(), list_dir=config.SmtpHookLists)
        try:
            runtime = HookProcess(config.SmtpHook, **options)
        except HookError:
            if previous is not None:
                LOG.error("SmtpHook does not load; this hook process keeps the hook it had")
                previous.vx_spec, previous.vx_generation = spec, generation    # tried once, not per message
                return previous
            if not self.last_good:
                raise
            # the file was broken after other hook processes loaded it: run the old hook here too
            LOG.error("SmtpHook does not load; this hook process uses the last version that did")
            runtime = HookProcess(config.SmtpHook, source=self.last_good, **options)
        runtime.vx_spec, runtime.vx_generation = spec, generation
        if runtime.source:
            self.last_good = runtime.source
        with self.lock:
            if previous is not None:
                self.processes.discard(previous)
                previous.close()
            self.processes.add(runtime)
        return runtime

    def decide(self, message, analysis):
        runtime = self.take()
        if runtime is None:
            return Decision(action="accept")
        started = time.monotonic()
        try:
            return self._decide(runtime, message, analysis)
        finally:
            self.give_back(runtime, time.monotonic() - started)

    def _decide(self, runtime, message, analysis):
        row = message.row
        client = row.client
        envelope = Envelope(mail_from=row.mail_from, rcpt_to=row.rcpt_to, helo=client.get("helo", ""),
                            client={"hostname": client.get("name", ""), "ip": client.get("addr") or client.get("peer_ip", ""),
                                    "port": _port(client)},
                            queue_id=row.id)
        metrics = self.gateway.metrics
        started = time.monotonic()
        decision = runtime.run(envelope, MessageFile(message.path), analysis or {})
        metrics.hook_seconds.observe(time.monotonic() - started)
        if decision.error:
            metrics.hook_failures.labels(failure_kind(decision.reason)).inc()
            message.log.error("hook failed: %s; action %s", decision.reason, decision.action)
        return decision

    def reload(self):
        self.generation += 1

    def start(self):
        self.analyser.start()

    def shut_down(self):
        self.analyser.shut_down()
        with self.lock:
            for runtime in self.processes:
                runtime.close()
            self.processes.clear()
            self.idle.clear()
            self.warm = None


def _port(client):
    """The client's port for the hook: XFORWARD's when numeric, 0 when it said [UNAVAILABLE]."""
    port = str(client.get("port") or client.get("peer_port") or 0)
    return int(port) if port.isascii() and port.isdigit() else 0


def failure_kind(reason):
    """time limit, memory limit or error: the label of a failed hook call in /metrics."""
    reason = str(reason or "")
    for kind in ("time limit", "memory limit"):
        if kind in reason:
            return kind
    return "error"
