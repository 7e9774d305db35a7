"""HTTP client for the Dr.Web vxCube API v2.0: look a sample up by SHA-256, upload it,
start an analysis and poll it, read the licence, platforms and formats. It keeps one
requests session per thread, puts a timeout on every call, and retries what may succeed
later (connection errors, timeouts, 429 honouring Retry-After, 5xx) with jittered
exponential backoff under a ``RetryPolicy`` built from configuration values. Every failure
is a ``VxcubeError`` that says whether it is transient; the API key never appears in an
error, a repr or a log line. Every reply is checked for the shape vxgate relies on before it
is returned: a reply of the wrong shape (``"tasks": "garbage"``) is a transient error of that
request, retried like a 5xx, never an exception deeper in vxgate. Retries are logged at
debug level; the caller logs what changes for its work.
"""
import email.utils
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass, fields

import requests
import tenacity
from tenacity.wait import wait_base

log = logging.getLogger("vxgate.vxcube")

API_PATH = "api-2.0/"
_KEY_PLACEHOLDER = "<api-key>"
_BODY_EXCERPT = 200


class VxcubeError(Exception):
    """A failed vxCube call. ``transient`` errors may succeed if tried again later."""

    def __init__(self, message, status=None, transient=False, retry_after=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.transient = transient
        self.retry_after = retry_after  # seconds the server asked us to wait, if any

    def __str__(self):
        return self.message if self.status is None else "%s (HTTP %d)" % (self.message, self.status)

    def __repr__(self):
        return "VxcubeError(%r, status=%r, transient=%r)" % (
            self.message, self.status, self.transient)


def api_base_url(address):
    """``<address>/api-2.0/`` for ``host``, ``host:port`` or ``http(s)://host[:port][/path]``."""
    text = (address or "").strip()
    if "://" not in text:
        text = "https://" + text  # vxCube is served over TLS unless told otherwise
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a vxCube API address: %r" % address)
    path = parts.path.rstrip("/")
    if not path.endswith("/" + API_PATH.rstrip("/")):
        path += "/" + API_PATH.rstrip("/")
    return "%s://%s%s/" % (parts.scheme, parts.netloc, path)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure (all times in seconds)."""
    attempts: int = 4
    initial: float = 1.0
    maximum: float = 30.0
    max_elapsed: float = 120.0

    def __post_init__(self):
        if int(self.attempts) != self.attempts or self.attempts < 1:
            raise ValueError("retry attempts must be a whole number >= 1")
        if min(self.initial, self.maximum) < 0 or self.max_elapsed <= 0:
            raise ValueError("retry times must be >= 0 and max_elapsed > 0")

    @classmethod
    def from_config(cls, values):
        """Build from a mapping of plain values (numbers or numeric strings)."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:  # a typo in the configuration must not silently mean "default"
            raise ValueError("unknown retry setting(s): %s" % ", ".join(sorted(unknown)))
        try:
            converted = {name: (int if known[name] is int else float)(value)
                         for name, value in values.items() if value is not None}
        except (TypeError, ValueError) as exc:
            raise ValueError("bad retry setting: %s" % exc) from None
        return cls(**converted)

    def retrying(self, sleep=time.sleep):
        """A fresh tenacity ``Retrying`` object implementing this policy."""
        backoff = tenacity.wait_exponential_jitter(
            multiplier=self.initial, max=self.maximum, jitter=self.initial)
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts)
            | tenacity.stop_before_delay(self.max_elapsed),
            wait=_WaitRetryAfter(backoff, self.maximum),
            retry=tenacity.retry_if_exception(_is_transient),
            before_sleep=_log_retry,
            sleep=sleep,
            reraise=True,
        )


class _WaitRetryAfter(wait_base):
    """Backoff, but never shorter than the server's Retry-After, and never over ``maximum``."""

    def __init__(self, backoff, maximum):
        self.backoff = backoff
        self.maximum = maximum

    def __call__(self, retry_state):
        error = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(error, "retry_after", None) or 0.0
        return min(max(self.backoff(retry_state), asked), self.maximum)


def _is_transient(error):
    return isinstance(error, VxcubeError) and error.transient


def _log_retry(retry_state):
    log.debug("vxCube call failed (%s); attempt %d, retrying in %.2fs",
                retry_state.outcome.exception(), retry_state.attempt_number,
                retry_state.upcoming_sleep)


def _retry_after(value):
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class VxcubeClient:
    """The vxCube API v2.0 calls a mail filter needs; safe to share between threads."""

    def __init__(self, address, api_key, *, timeout=30.0, verify=True, retry=None, metrics=None):
        if not api_key:
            raise ValueError("a vxCube API key is required")
        self.base_url = api_base_url(address)
        self.timeout = timeout
        self.verify = verify  # True, False or the path of a CA bundle
        self.retry_policy = retry or RetryPolicy()
        self._api_key = api_key
        self._retrying = self.retry_policy.retrying()
        self._local = threading.local()
        self._sessions = []
        self._sessions_lock = threading.Lock()
        self.metrics = metrics       # salmon_app.metrics.Metrics, or None (doctor, tests)

    def __repr__(self):
        return "VxcubeClient(%r)" % self.base_url

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Close the sessions of all threads."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    # --- API calls ----------------------------------------------------------------

    def find_sample(self, sha256):
        """The Sample with this SHA-256 already on the server, or None."""
        sha256 = sha256.lower()
        reply = self._call("GET", "samples", _samples_shape,
                           json={"sha256": sha256, "count": 1, "offset": 0})
        # Check the hash ourselves: a proxy that drops GET bodies turns the lookup into
        # "list the latest samples", and a wrong match would skip an analysis.
        return next((sample for sample in reply if str(sample.get("sha256", "")).lower() == sha256), None)

    def upload(self, filename, data):
        """Upload a file; an archive or an e-mail may come back split into several Samples."""
        return self._call("POST", "samples", _upload_shape,
                          files={"file": (filename, data, "application/octet-stream")})

    def start_analysis(self, sample_id, platforms=None, analysis_time=None, format_name=None):
        """Start an analysis of a sample; omitted settings are left to the server."""
        body = {"sample_id": sample_id,
                "platforms": list(platforms) if platforms is not None else None,
                "analysis_time": analysis_time, "format_name": format_name}
        body = {name: value for name, value in body.items() if value is not None}
        return self._call("POST", "analyses", _started_shape, json=body)

    def get_analysis(self, analysis_id):
        path = "analyses/%s" % urllib.parse.quote(str(analysis_id), safe="")
        return self._call("GET", path, _analysis_shape)

    def license(self):
        return self._call("GET", "license", _licence_shape)

    def platforms(self):
        return self._call("GET", "platforms", lambda reply: _as_list(reply, "platforms"))

    def formats(self):
        return self._call("GET", "formats", lambda reply: _as_list(reply, "formats"))

    # --- transport ----------------------------------------------------------------

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = "api-key %s" % self._api_key
            # The environment's proxy and CA bundle for vxCube's address, read once: left to
            # requests, every call walks os.environ twice (a quarter of a poll's CPU), and a
            # ~/.netrc entry for the host would replace the API key with Basic auth.
            settings = session.merge_environment_settings(self.base_url, {}, None, self.verify, None)
            session.trust_env = False
            session.proxies.update(settings["proxies"])
            session.verify = settings["verify"]
            with self._sessions_lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def _call(self, method, path, shape, **kwargs):
        # copy(): one Retrying object may be running in several threads at once.
        retrying = self._retrying.copy()
        try:
            return retrying(self._attempt, method, path, shape, **kwargs)
        finally:
            retries = retrying.statistics.get("attempt_number", 1) - 1
            if self.metrics is not None and retries > 0:
                self.metrics.vxcube_retries.inc(retries)

    def _observe(self, path, status, seconds):
        if self.metrics is not None:
            endpoint = path.strip("/").split("/", 1)[0] or "/"     # samples, analyses, license, ...
            self.metrics.vxcube_requests.labels(endpoint, status).inc()
            self.metrics.vxcube_latency.labels(endpoint).observe(seconds)

    def _attempt(self, method, path, shape, **kwargs):
        started = time.monotonic()
        try:
            response = self._session().request(method, self.base_url + path,
                                               timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            self._observe(path, "error", time.monotonic() - started)
            raise self._transport_error(method, path, exc) from None
        self._observe(path, str(response.status_code), time.monotonic() - started)
        log.debug("%s %s -> %d in %.3fs", method, path, response.status_code,
                  time.monotonic() - started)
        reply = self._decode(method, path, response)
        try:
            return shape(reply)
        except _Malformed as exc:
            raise VxcubeError("vxCube %s %s: malformed reply (%s)" % (method, path, exc),
                              response.status_code, transient=True) from None

    def _transport_error(self, method, path, exc):
        # A certificate that does not verify will not verify on the next try either.
        transient = isinstance(exc, (requests.ConnectionError, requests.Timeout,
                                     requests.exceptions.ChunkedEncodingError)) \
            and not isinstance(exc, requests.exceptions.SSLError)
        kind = "timed out" if isinstance(exc, requests.Timeout) else "failed"
        return VxcubeError(self._scrub("vxCube %s %s %s: %s" % (method, path, kind, exc)),
                           transient=transient)

    def _decode(self, method, path, response):
        status = response.status_code
        if response.ok:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:   # a proxy's page, a truncated reply: may be right next time
                raise VxcubeError("vxCube %s %s: reply is not JSON" % (method, path),
                                  status, transient=True) from None
        message = self._scrub("vxCube %s %s: %s" % (method, path, _error_text(response)))
        transient = status == 429 or status >= 500
        retry_after = _retry_after(response.headers.get("Retry-After")) if transient else None
        raise VxcubeError(message, status, transient=transient, retry_after=retry_after)

    def _scrub(self, text):
        return str(text).replace(self._api_key, _KEY_PLACEHOLDER)


def _error_text(response):
    """The readable part of an error reply, following the official client's rules."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if key in body:
                return str(body[key])
        if body:  # a 400 lists errors per field: {"file": ["This field is required."]}
            return "; ".join("%s: %s" % (name, "; ".join(map(str, errors))
                                         if isinstance(errors, list) else errors)
                             for name, errors in body.items())
    elif isinstance(body, (str, list)) and body:
        return str(body)[:_BODY_EXCERPT]
    # Anything else is likely a proxy's HTML page: the status line says as much.
    return response.reason or "error"


# --- reply shapes: what vxgate reads of each reply, checked before anybody reads it ---------

class _Malformed(Exception):
    """A reply that is JSON but not of the expected shape (the text says where)."""


def _as_list(reply, what):
    if isinstance(reply, list):
        return reply
    if isinstance(reply, dict):
        return [reply]
    raise _Malformed("no %s where some were expected" % what)


def _as_dict(reply, what):
    if not isinstance(reply, dict):
        raise _Malformed("no %s object" % what)
    return reply


def _typed(obj, name, types, what, required=False):
    value = obj.get(name)
    if value is None and not required:
        return
    # bool is an int in Python, never in vxCube's replies
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise _Malformed("%s %s is %s" % (what, name, type(value).__name__ if value is not None else "missing"))


def _sample_shape(sample):
    sample = _as_dict(sample, "sample")
    _typed(sample, "id", (int, str), "sample", required=True)
    for name in ("sha256", "name", "format_name"):
        _typed(sample, name, str, "sample")
    _typed(sample, "size", int, "sample")
    _typed(sample, "platforms", list, "sample")
    if not all(isinstance(code, str) for code in sample.get("platforms") or ()):
        raise _Malformed("sample platforms are not codes")
    return sample


def _samples_shape(reply):
    return [_sample_shape(sample) for sample in _as_list(reply, "samples")]


def _upload_shape(reply):
    """A Sample, or ``{"samples": [...]}`` for an archive or an e-mail vxCube split."""
    if isinstance(reply, dict) and "samples" in reply and "id" not in reply:
        if not isinstance(reply["samples"], list):
            raise _Malformed("samples is %s" % type(reply["samples"]).__name__)
        samples = _samples_shape(reply["samples"])
        for sample in samples:
            _typed(sample, "sha256", str, "split sample", required=True)
        return samples
    return _samples_shape(reply)


def _task_shape(task):
    task = _as_dict(task, "task")
    _typed(task, "status", str, "task", required=True)
    for name in ("verdict", "platform_code"):
        _typed(task, name, str, "task")
    _typed(task, "maliciousness", (int, float), "task")
    _typed(task, "rules", dict, "task")
    if any(not isinstance(v, list) for v in (task.get("rules") or {}).values()):
        raise _Malformed("task rules are not lists")
    return task


def _analysis_shape(reply, tasks_required=True):
    analysis = _as_dict(reply, "analysis")
    _typed(analysis, "id", (int, str), "analysis", required=True)
    _typed(analysis, "tasks", list, "analysis", required=tasks_required)
    analysis["tasks"] = [_task_shape(task) for task in analysis.get("tasks") or ()]
    return analysis


def _started_shape(reply):
    # what POST analyses returns has no need to list its tasks yet
    return _analysis_shape(reply, tasks_required=False)


def _licence_shape(reply):
    licence = _as_dict(reply, "licence")
    for name in ("uploads_spent", "uploads_total"):
        _typed(licence, name, int, "licence", required=True)
    _typed(licence, "upload_max_size", int, "licence")
    return licence
