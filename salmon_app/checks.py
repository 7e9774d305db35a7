"""The check stage's seam: analysis (vxCube) and the policy decision (the Lua hook).

``analyse()`` returns the analysis of a message, or None while analyses are pending (the
message then re-enters the check stage when they finish). ``decide()`` runs ``SmtpHook`` in
the calling worker thread's own Lua runtime, held in a child process of that worker
(``policy.process``): Lua states are not thread-safe, and a runaway hook, even one stuck in
a single C call or a Python callback, then holds one worker for at most ``SmtpHookTimeout``
plus half a second, never the others. Without a hook every message is accepted unchanged.
"""
import logging
import threading
import time

from salmon_app.policy import Decision, Envelope, HookError
from salmon_app.policy.context import MessageFile
from salmon_app.policy.process import HookProcess

LOG = logging.getLogger("vxgate.policy")


class Checks:
    def __init__(self, gateway):
        from salmon_app.analysis import Analyser
        self.gateway = gateway
        self.analyser = Analyser(gateway)
        self.local = threading.local()
        self.generation = 0          # bumped by reload(): every runtime re-reads its hook
        self.processes = set()       # of every worker, stopped at shut-down
        self.lock = threading.Lock()

    def analyse(self, message):
        return self.analyser.analyse(message)

    def runtime(self):
        config = self.gateway.config
        if not config.SmtpHook:
            return None
        runtime = getattr(self.local, "runtime", None)
        spec = (config.SmtpHook, config.SmtpHookMemory, config.SmtpHookTimeout, config.SmtpHookErrorAction,
                config.SmtpHookLists)
        if runtime is None or self.local.spec != spec:
            # first use in this thread, or a reload changed the hook or its limits: build it afresh
            runtime = self.local.runtime = self._new_runtime(config, runtime)
            self.local.spec, self.local.generation = spec, self.generation
        elif self.local.generation != self.generation:
            runtime.reload()
            self.local.generation = self.generation
        if runtime.source:
            self.last_good = runtime.source
        return runtime

    def _new_runtime(self, config, previous=None):
        options = dict(memory_limit=config.SmtpHookMemory, time_limit=config.SmtpHookTimeout,
                       on_error=config.SmtpHookErrorAction.lower(), list_dir=config.SmtpHookLists)
        try:
            runtime = HookProcess(config.SmtpHook, **options)
        except HookError:
            if previous is not None:
                LOG.error("SmtpHook does not load; this worker keeps the hook it had")
                return previous
            if not getattr(self, "last_good", None):
                raise
            # the file was broken after other threads loaded it: keep running the old hook here too
            LOG.error("SmtpHook does not load; this worker uses the last version that did")
            runtime = HookProcess(config.SmtpHook, source=self.last_good, **options)
        with self.lock:
            if previous is not None:
                self.processes.discard(previous)
                previous.close()
            self.processes.add(runtime)
        return runtime

    def decide(self, message, analysis):
        runtime = self.runtime()
        if runtime is None:
            return Decision(action="accept")
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
