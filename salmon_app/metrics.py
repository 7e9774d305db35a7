"""Prometheus metrics on ``MetricsSocket``: what vxgate does, with counters cheap enough for the hot path.

Counters and histograms are updated where things happen (a few microseconds each, label
children resolved once); everything that is a state rather than an event (queue depths, busy
workers, open sessions, messages owned by state and the age of the oldest, quarantine size,
analyses in flight, storage health) is read only when Prometheus scrapes, so it costs mail
nothing. Each gateway has its own registry (tests start several in one process). The names
and their meaning are listed in the README's "Monitoring" section; alert rules and a Grafana
dashboard that use them are in ``config/monitoring/``.
"""
import logging
import platform
import threading
import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

LOG = logging.getLogger("vxgate.metrics")
prometheus_client.disable_created_metrics()     # *_created series only double what a scrape shows

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_HOOK = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
_ANALYSIS = (10, 30, 60, 120, 180, 300, 600, 900, 1800, 3600)


def reply_class(code):
    """2xx / 4xx / 5xx for a reply code; "connection" when no reply came (code 0)."""
    return "%dxx" % (code // 100) if code >= 200 else "connection"


class _Counter(Counter):
    """A Counter whose label children are kept by their values: ``labels()`` checks and
    converts the values on every call, which cost more than the count itself on the hot path.
    (prometheus_client hands out the same child for the same values: only the lookup is new.)"""

    def labels(self, *values, **named):
        if named:
            return super().labels(*values, **named)
        kept = self.__dict__.setdefault("_vx_children", {})
        child = kept.get(values)
        if child is None:
            child = kept[values] = super().labels(*values)
        return child


class Metrics:
    def __init__(self, gateway=None):
        registry = self.registry = CollectorRegistry()

        def counter(name, doc, labels=()):
            return _Counter(name, doc, labels, registry=registry)
        self.received = counter("vxgate_messages_received", "Messages stored durably, by mode (smtp, bcc).", ["mode"])
        self.finished = counter("vxgate_messages_finished", "Messages that reached a final state, by mode and "
                                "outcome (delivered, rejected, tempfailed, discarded, quarantined, failed, held, "
                                "dropped, reported, closed).", ["mode", "outcome"])
        self.verdicts = counter("vxgate_verdicts", "Policy decisions, by the message's verdict and the hook's action.",
                                ["verdict", "action"])
        self.relay_replies = counter("vxgate_relay_replies", "Per-recipient replies of a next hop, by destination "
                                     "(smtp: SmtpSenderRelay, report: BccSmtpServer) and class (2xx, 4xx, 5xx, "
                                     "connection: no reply).", ["destination", "class"])
        self.bcc_reports = counter("vxgate_bcc_reports", "BCC reports by result (sent, deferred, failed).", ["result"])
        self.smtp_refused = counter("vxgate_smtp_connections_refused", "Connections answered 421 because "
                                    "SmtpMaxConnections were open.", ["listener"])
        self.smtp_errors = counter("vxgate_smtp_protocol_errors", "Commands answered with a 5xx (syntax, sequence, "
                                   "refused parameters).", ["listener"])
        self.vxcube_requests = counter("vxgate_vxcube_requests", "HTTP requests to vxCube by endpoint and status "
                                       "(the HTTP code, or error when none came).", ["endpoint", "status"])
        self.vxcube_latency = Histogram("vxgate_vxcube_request_seconds", "Duration of one HTTP request to vxCube.",
                                        ["endpoint"], buckets=_SECONDS, registry=registry)
        self.vxcube_retries = counter("vxgate_vxcube_retries", "HTTP requests to vxCube repeated after a failure.")
        self.vxcube_uploads = counter("vxgate_vxcube_uploads", "Samples uploaded to vxCube.")
        self.vxcube_cache_hits = counter("vxgate_vxcube_cache_hits", "Files not uploaded because their verdict was "
                                         "known: local (vxgate's cache) or lookup (vxCube had the sample).", ["where"])
        self.analysis_seconds = Histogram("vxgate_vxcube_analysis_seconds", "From upload to verdict of one sample.",
                                          buckets=_ANALYSIS, registry=registry)
        self.unchecked = counter("vxgate_unchecked_files", "Files that ended unchecked, by cause.", ["cause"])
        self.hook_seconds = Histogram("vxgate_hook_seconds", "Run time of one SmtpHook call.", buckets=_HOOK,
                                      registry=registry)
        self.hook_failures = counter("vxgate_hook_failures", "Failed SmtpHook calls by kind (error, time limit, "
                                     "memory limit).", ["kind"])
        self.expiry_runs = counter("vxgate_expiry_runs", "Runs of the quarantine expiry.")
        self.expired = counter("vxgate_expired_messages", "Messages removed by the quarantine expiry.")
        if gateway is not None:
            registry.register(_Live(gateway))
        self.server = None

    def serve(self, address):
        """Listen on ``address`` (IP:port); a port in use is logged, and mail flows on without metrics."""
        try:
            self.server, _ = start_http_server(address.port, address.host, registry=self.registry)
        except OSError as exc:
            LOG.error("metrics: cannot listen on %s (%s); /metrics is off until the next start", address, exc)
            return False
        LOG.info("metrics: listening on %s (/metrics)", address)
        return True

    @property
    def port(self):
        return self.server.server_address[1] if self.server else 0

    def close(self):
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def close_soon(self):
        """close() in a thread, so stopping the rest need not wait for it; returns the thread."""
        thread = threading.Thread(target=self.close, name="metrics-close", daemon=True)
        thread.start()
        return thread


class _Live:
    """States read at scrape time: nothing of this runs on the mail path."""

    def __init__(self, gateway):
        self.gateway = gateway

    def describe(self):
        return []      # no collect() at registration time: the database may not be open yet

    def collect(self):
        gateway = self.gateway
        yield _gauge("vxgate_stage_queue_depth", "Messages queued for a stage's workers.", "stage",
                     {name: stage.backlog() for name, stage in gateway.stages.items()})
        yield _gauge("vxgate_stage_busy_workers", "Workers of a stage running a step now.", "stage",
                     {name: stage.busy for name, stage in gateway.stages.items()})
        yield _gauge("vxgate_stage_workers", "Workers of a stage.", "stage",
                     {name: stage.workers for name, stage in gateway.stages.items()})
        yield _gauge("vxgate_smtp_sessions_open", "SMTP sessions open now, by listener.", "listener",
                     {server.name: len(server.sessions) for server in gateway.servers})
        yield _gauge("vxgate_storage_failing", "1 while the spool or database cannot be written (new mail "
                     "gets 451).", None, {(): 1 if gateway.storage.failing else 0})
        yield _gauge("vxgate_outcomes_kept_in_memory", "Outcomes waiting in memory for storage to work again.",
                     None, {(): len(gateway.storage.pending)})
        yield from _database(gateway)
        info = InfoMetricFamily("vxgate_build", "vxgate, Python and Lua versions.")
        info.add_metric([], {"version": _version(), "python": platform.python_version(), "lua": _lua_version()})
        yield info


def _gauge(name, doc, label, values):
    family = GaugeMetricFamily(name, doc, labels=[label] if label else [])
    for key, value in values.items():
        family.add_metric([key] if label else [], value)
    return family


def _database(gateway):
    from salmon_app.storage import models
    now = time.time()
    try:
        owned = models.owned_by_state(gateway.node)
        stored = models.stored_totals(gateway.node)
        analysing = models.samples_in_flight(gateway.node)
    except Exception as exc:      # a scrape must answer even while storage fails
        LOG.warning("metrics: database not readable: %s", exc)
        return
    yield _gauge("vxgate_messages_owned", "Messages vxgate owns now (acknowledged or in a session), by state.",
                 "state", {state: count for state, (count, _) in owned.items()})
    oldest = min((created for _, created in owned.values()), default=None)
    yield _gauge("vxgate_oldest_owned_message_age_seconds", "Age of the oldest message vxgate owns (0: none).",
                 None, {(): round(now - oldest, 3) if oldest else 0})
    yield _gauge("vxgate_quarantine_messages", "Message records of this node (NodeName) in the quarantine database.", None, {(): stored[0]})
    yield _gauge("vxgate_quarantine_bytes", "Bytes of the message files kept in this node's spool.", None, {(): stored[1]})
    yield _gauge("vxgate_vxcube_analyses_in_flight", "Samples queued, uploaded or being analysed at vxCube.",
                 None, {(): analysing})


def _version():
    from salmon_app import installed_version
    return installed_version() or "unknown"


_LUA = []


def _lua_version():
    if not _LUA:
        try:
            import lupa
            _LUA.append(str(lupa.LuaRuntime().eval("_VERSION")))
        except Exception:
            _LUA.append("unknown")
    return _LUA[0]
