"""A Dr.Web vxCube API v2.0 emulator for the demo, the tests and administrators who want
to try vxgate without a vxCube licence. It serves the calls a mail filter makes (samples,
analyses, tasks, license, platforms, formats) at ``<url>/api-2.0/`` and is strict where a
real server would reject a faulty client: it wants ``Authorization: api-key <KEY>``
(else 401), a multipart field ``file`` on uploads (else 400) and a JSON body with a known
``sample_id`` when starting an analysis (else 400/404).

Samples live in memory, keyed by SHA-256, so uploading the same content again returns the
same Sample and spends no licence upload. Formats are recognised by content: exe, dll,
com, pdf, doc(x/m), xls(x/m), ppt(x/m), rtf, js, vbs, ps1, hta, html, zip and jar run on
the Windows platforms win7x64 and win10x64; anything else gets ``format_name`` "" and no
platforms, i.e. it is not analysable unless ``format_name`` is passed. An uploaded e-mail
(RFC 822 content, or a name ending .eml) is split: every attachment becomes a Sample and
the reply is ``{"samples": [...]}``.

The licence (``uploads_total``, ``--uploads-total``) counts uploads of new content; once it
is spent, an upload of new content is answered ``403 {"message": "Upload limit exceeded"}``
and ``GET license`` shows ``uploads_spent == uploads_total``. vxCube's API reference does not
document this answer, so clients should not rely on its wording (vxgate checks the licence).

Each analysis has one task per platform: "in queue" for the first fifth of the emulated
analysis time, then "processing" with ``progress``, then finished. The outcome depends on
markers anywhere in the file, first match wins:

- ``VXGATE-TEST-FAIL``: task status "failed", no verdict;
- the EICAR test string: "successful", verdict malware2, maliciousness 100;
- ``VXGATE-TEST-SUSPICIOUS``: "successful", verdict suspicious1, maliciousness 50;
- otherwise: "successful", verdict clean1, maliciousness 0.

Test controls, outside the API and without authentication:

- ``GET /_sim/stats``: {"uploads": POST samples that stored new content,
  "upload_requests": all authenticated POST samples, "lookups": GET samples,
  "analyses": analyses started, "requests": all API requests, "by_sha256": {sha256:
  upload requests carrying it}, "samples": N, "faults": pending faults};
- ``POST /_sim/faults`` with an object or a list of objects: {"status": 500, "count": 3}
  answers the next 3 API requests with HTTP 500; "retry_after": seconds adds a
  Retry-After header; {"drop": true} closes the connection without a reply; {"delay": 2.0}
  waits before replying (combine it with status or drop, or alone); {"body": "<text>"}
  answers 200 with that text as the JSON body (a reply of the wrong shape, such as
  ``{"tasks": "garbage"}``, or no JSON at all); "path": "samples" limits the fault to API
  paths starting so. ``DELETE /_sim/faults`` clears them;
- ``POST /_sim/reset`` forgets samples, analyses, counters and faults (not the settings);
- ``GET|POST /_sim/config`` reads or changes "analysis_time", "uploads_total",
  "upload_max_size".

The same controls exist as methods: ``set_fault()``, ``clear_faults()``, ``stats()``,
``reset()``, ``configure()``. Run it with ``main()`` (``vxgate vxcube-sim``).
"""
import argparse
import collections
import email.message
import email.parser
import email.utils
import hashlib
import hmac
import http.server
import itertools
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone

from salmon_app.vxcube import extract

log = logging.getLogger("vxgate.vxcube.sim")

DEFAULT_API_KEY = "00000000-0000-4000-8000-000000000000"
DEFAULT_LISTEN = "127.0.0.1:8088"

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SUSPICIOUS_MARKER = b"VXGATE-TEST-SUSPICIOUS"
FAIL_MARKER = b"VXGATE-TEST-FAIL"

API_PREFIX = "/api-2.0/"
CONTROL_PREFIX = "/_sim/"
QUEUE_SHARE = 0.2
MAX_RUN_TIME = 1800

PLATFORMS = [
    {"code": "winxpx86", "name": "Windows XP SP3 x86", "os_code": "winxp"},
    {"code": "win7x86", "name": "Windows 7 SP1 x86", "os_code": "win7"},
    {"code": "win7x64", "name": "Windows 7 SP1 x64", "os_code": "win7"},
    {"code": "win10x64", "name": "Windows 10 x64", "os_code": "win10"},
]
DEFAULT_PLATFORMS = ["win7x64", "win10x64"]
FORMAT_GROUPS = {
    "exe": "exe", "dll": "exe", "com": "exe", "pdf": "pdf",
    "doc": "office", "docx": "office", "docm": "office", "xls": "office", "xlsx": "office",
    "xlsm": "office", "ppt": "office", "pptx": "office", "pptm": "office", "rtf": "office",
    "js": "script", "vbs": "script", "ps1": "script", "hta": "script", "html": "browser",
    "zip": "archive", "jar": "java",
}

_OUTCOMES = (
    (FAIL_MARKER, {"status": "failed", "message": "analysis failed (%s marker)"
                   % FAIL_MARKER.decode()}),
    (EICAR, {"status": "successful", "verdict": "malware2", "maliciousness": 100,
             "rules": {"malicious": ["EICAR test file"], "suspicious": [], "neutral": []},
             "detects": ["yara"], "sample_detect": "EICAR Test File (NOT a Virus!)"}),
    (SUSPICIOUS_MARKER, {"status": "successful", "verdict": "suspicious1", "maliciousness": 50,
                         "rules": {"malicious": [], "suspicious": ["vxgate test marker"],
                                   "neutral": []},
                         "detects": ["behavior"], "sample_detect": None}),
)
_CLEAN = {"status": "successful", "verdict": "clean1", "maliciousness": 0,
          "rules": {"malicious": [], "suspicious": [], "neutral": []},
          "detects": [], "sample_detect": None}

_FAULT_KEYS = {"status", "count", "retry_after", "drop", "delay", "path", "body"}
_SETTINGS = {"analysis_time": float, "uploads_total": int, "upload_max_size": int}


class ApiError(Exception):
    """An error reply: HTTP status and JSON body."""

    def __init__(self, status, body):
        super().__init__(status, body)
        self.status = status
        self.body = body


def _now():
    return datetime.now(timezone.utc)


def _iso(moment):
    return moment.isoformat(timespec="seconds")


def _json_object(body):
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise ApiError(400, {"message": "JSON parse error"}) from None
    if not isinstance(data, dict):
        raise ApiError(400, {"message": "a JSON object is expected"})
    return data


def _api_path(path):
    """An API path relative to the base ("samples", "analyses/<id>"), for faults and routes."""
    path = path.strip("/")
    prefix = API_PREFIX.strip("/")
    return path[len(prefix):].lstrip("/") if path.startswith(prefix) else path


def _outcome(content):
    return next((dict(result) for marker, result in _OUTCOMES if marker in content),
                dict(_CLEAN))


# --- multipart -----------------------------------------------------------------------

def multipart_fields(content_type, body):
    """{field name: (file name, bytes)} of a multipart/form-data body."""
    header = email.message.Message()
    header["Content-Type"] = content_type or "application/octet-stream"
    if header.get_content_type() != "multipart/form-data":
        raise ApiError(415, {"message": 'unsupported media type "%s" in request'
                             % header.get_content_type()})
    boundary = header.get_param("boundary")
    if not boundary:
        raise ApiError(400, {"message": "multipart body without a boundary"})
    fields = {}
    for segment in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if segment.startswith(b"--"):
            break  # the closing delimiter
        name, filename, content = _multipart_part(segment)
        if name:
            fields[name] = (filename, content)
    return fields


def _multipart_part(segment):
    segment = segment[2:] if segment.startswith(b"\r\n") else segment
    segment = segment[:-2] if segment.endswith(b"\r\n") else segment
    head, _, content = segment.partition(b"\r\n\r\n")
    headers = email.parser.HeaderParser().parsestr(head.decode("utf-8", "replace") + "\r\n\r\n")
    name = headers.get_param("name", header="content-disposition")
    name = email.utils.collapse_rfc2231_value(name) if name else None
    return name, headers.get_filename() or "", content


# --- the emulated service ------------------------------------------------------------

class SimBackend:
    """State and behaviour of the emulated vxCube, independent of HTTP. Thread-safe."""

    def __init__(self, api_key=DEFAULT_API_KEY, analysis_time=1.0,
                 uploads_total=100000, upload_max_size=128 * 1024 * 1024):
        self.api_key = api_key
        self.settings = {"analysis_time": float(analysis_time), "uploads_total": uploads_total,
                         "upload_max_size": upload_max_size}
        self.lock = threading.RLock()
        self.reset()

    def reset(self):
        with self.lock:
            self.samples = {}     # sha256 -> Sample
            self.contents = {}    # sample id -> bytes
            self.analyses = {}    # analysis id -> record
            self.tasks = {}       # task id -> (record, task)
            self.faults = []
            self.counters = collections.Counter()
            self.by_sha256 = collections.Counter()
            self.sample_ids = itertools.count(1)
            self.task_ids = itertools.count(1)

    # --- controls ---------------------------------------------------------------

    def configure(self, **settings):
        unknown = set(settings) - set(_SETTINGS)
        if unknown:
            raise ValueError("unknown setting(s): %s" % ", ".join(sorted(unknown)))
        with self.lock:
            for name, value in settings.items():
                value = _SETTINGS[name](value)
                if value < 0:
                    raise ValueError("%s must be >= 0" % name)
                self.settings[name] = value
            return dict(self.settings)

    def stats(self):
        with self.lock:
            return {"uploads": self.counters["uploads"],
                    "upload_requests": self.counters["upload_requests"],
                    "lookups": self.counters["lookups"],
                    "analyses": self.counters["analyses"],
                    "requests": self.counters["requests"],
                    "by_sha256": dict(self.by_sha256),
                    "samples": len(self.samples),
                    "faults": [dict(fault) for fault in self.faults]}

    def add_fault(self, spec):
        fault = _valid_fault(spec)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self):
        with self.lock:
            self.faults.clear()

    def take_fault(self, api_path):
        """Count an API request and return the fault it is to suffer, if any."""
        with self.lock:
            self.counters["requests"] += 1
            for fault in self.faults:
                if api_path.startswith(fault["path"]):
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def authorised(self, header):
        if not header:
            raise ApiError(401, {"message": "Authentication credentials were not provided."})
        if not hmac.compare_digest(header.encode(), ("api-key %s" % self.api_key).encode()):
            raise ApiError(401, {"message": "Invalid API key."})

    # --- API --------------------------------------------------------------------

    def list_samples(self, request):
        filters = _json_object(request.body) if request.body else dict(request.query)
        try:
            count, offset = int(filters.get("count", 100)), int(filters.get("offset", 0))
        except (TypeError, ValueError):
            raise ApiError(400, {"message": "count and offset must be integers"}) from None
        wanted = {key: str(filters[key]).lower()
                  for key in ("sha256", "sha1", "md5", "format_name") if key in filters}
        with self.lock:
            self.counters["lookups"] += 1
            found = [sample for sample in self.samples.values()
                     if all(str(sample[key]).lower() == value for key, value in wanted.items())]
        return 200, found[offset:offset + count]

    def get_sample(self, request, sample_id):
        with self.lock:
            return 200, self._sample(sample_id)

    def upload(self, request):
        fields = multipart_fields(request.headers.get("Content-Type"), request.body)
        with self.lock:
            self.counters["upload_requests"] += 1
            if "file" not in fields:
                raise ApiError(400, {"file": ["This field is required."]})
            filename, content = fields["file"]
            self.by_sha256[hashlib.sha256(content).hexdigest()] += 1
            self._check_upload(content)
            split = extract.is_email(content, filename)
            files = self._split(content) if split else [(filename, content)]
            new = [body for _, body in files
                   if hashlib.sha256(body).hexdigest() not in self.samples]
            if new and self.counters["uploads"] >= self.settings["uploads_total"]:
                raise ApiError(403, {"message": "Upload limit exceeded"})
            samples = [self._store(name, body) for name, body in files]
            self.counters["uploads"] += bool(new)
        return 201, ({"samples": samples} if split else samples[0])

    def start_analysis(self, request):
        data = _json_object(request.body)
        with self.lock:
            sample = self._sample(_sample_id(data))
            format_name = _requested_format(data) or sample["format_name"]
            platforms = _requested_platforms(data) or sample["platforms"] \
                or (DEFAULT_PLATFORMS if format_name else [])
            if not platforms:
                raise ApiError(400, {"format_name": [
                    "The sample format is not recognised; pass format_name."]})
            _check_analysis_time(data.get("analysis_time"))
            record = self._new_analysis(sample, format_name, platforms)
            self.counters["analyses"] += 1
            return 201, self._analysis_view(record)

    def get_analysis(self, request, analysis_id):
        with self.lock:
            record = self.analyses.get(analysis_id)
            if record is None:
                raise ApiError(404, {"message": "Analysis not found."})
            return 200, self._analysis_view(record)

    def get_task(self, request, task_id):
        with self.lock:
            record, task = self.tasks.get(int(task_id), (None, None))
            if task is None:
                raise ApiError(404, {"message": "Task not found."})
            return 200, _task_view(record, task)

    def license(self, request):
        now = _now()
        with self.lock:
            return 200, {"start_date": _iso(now - timedelta(days=1)),
                         "end_date": _iso(now + timedelta(days=365)),
                         "uploads_spent": self.counters["uploads"],
                         "uploads_total": self.settings["uploads_total"],
                         "upload_max_size": self.settings["upload_max_size"],
                         "max_run_time": MAX_RUN_TIME,
                         "vnc_allowed": False, "cureit_allowed": False}

    def platforms(self, request):
        return 200, [dict(platform) for platform in PLATFORMS]

    def formats(self, request):
        return 200, [{"name": name, "group_name": group, "platforms": list(DEFAULT_PLATFORMS)}
                     for name, group in FORMAT_GROUPS.items()]

    # --- helpers ----------------------------------------------------------------

    def _check_upload(self, content):
        if not content:
            raise ApiError(400, {"file": ["The submitted file is empty."]})
        if len(content) > self.settings["upload_max_size"]:
            raise ApiError(400, {"file": ["The file is larger than upload_max_size."]})

    @staticmethod
    def _split(content):
        return [(item.name, item.content)
                for item in extract.extract_files(content) if item.content]

    def _sample(self, sample_id):
        for sample in self.samples.values():
            if sample["id"] == int(sample_id):
                return sample
        raise ApiError(404, {"message": "Sample not found."})

    def _store(self, name, content):
        sha256 = hashlib.sha256(content).hexdigest()
        if sha256 not in self.samples:
            detected = extract.detect_type(content, name)
            known = detected in FORMAT_GROUPS
            sample = {"id": next(self.sample_ids), "name": name or sha256, "size": len(content),
                      "format_name": detected if known else "", "upload_date": _iso(_now()),
                      "md5": hashlib.md5(content).hexdigest(),
                      "sha1": hashlib.sha1(content).hexdigest(), "sha256": sha256,
                      "is_x64": extract.is_x64_pe(content),
                      "platforms": list(DEFAULT_PLATFORMS) if known else []}
            self.samples[sha256] = sample
            self.contents[sample["id"]] = content
        return self.samples[sha256]

    def _new_analysis(self, sample, format_name, platforms):
        record = {"id": str(uuid.uuid4()), "sample": sample, "format_name": format_name,
                  "started": time.monotonic(), "start_date": _now(),
                  "duration": self.settings["analysis_time"],
                  "outcome": _outcome(self.contents[sample["id"]]), "tasks": []}
        for platform in platforms:
            task = {"id": next(self.task_ids), "platform_code": platform}
            record["tasks"].append(task)
            self.tasks[task["id"]] = (record, task)
        self.analyses[record["id"]] = record
        return record

    @staticmethod
    def _analysis_view(record):
        sample = record["sample"]
        return {"id": record["id"], "sample_id": sample["id"], "size": sample["size"],
                "sha1": sample["sha1"], "start_date": _iso(record["start_date"]),
                "user_name": "vxgate-sim", "format_name": record["format_name"],
                "tasks": [_task_view(record, task) for task in record["tasks"]]}


def _task_view(record, task):
    elapsed, duration = time.monotonic() - record["started"], record["duration"]
    view = {"id": task["id"], "platform_code": task["platform_code"],
            "start_date": _iso(record["start_date"]), "end_date": None, "maliciousness": None}
    if elapsed >= duration:
        view.update(record["outcome"],
                    end_date=_iso(record["start_date"] + timedelta(seconds=duration)))
    elif elapsed < duration * QUEUE_SHARE:
        view.update(status="in queue", progress=0, message="waiting for a virtual machine")
    else:
        view.update(status="processing", progress=int(100 * elapsed / duration),
                    message="analysing the sample")
    return view


def _sample_id(data):
    if "sample_id" not in data:
        raise ApiError(400, {"sample_id": ["This field is required."]})
    value = data["sample_id"]
    if isinstance(value, bool) or not isinstance(value, (int, str)) \
            or not str(value).isdigit():
        raise ApiError(400, {"sample_id": ["A valid integer is required."]})
    return int(value)


def _requested_format(data):
    name = data.get("format_name")
    if name is not None and name not in FORMAT_GROUPS:
        raise ApiError(400, {"format_name": ["Unknown format %r." % (name,)]})
    return name


def _requested_platforms(data):
    platforms = data.get("platforms")
    if platforms is None:
        return None
    codes = {platform["code"] for platform in PLATFORMS}
    if not isinstance(platforms, list) or not all(p in codes for p in platforms):
        raise ApiError(400, {"platforms": ["A list of platform codes is expected."]})
    return platforms


def _check_analysis_time(value):
    # The emulator runs on its own clock; the requested time is only validated.
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 1 <= value <= MAX_RUN_TIME):
        raise ApiError(400, {"analysis_time": [
            "An integer from 1 to %d is expected." % MAX_RUN_TIME]})


def _valid_fault(spec):
    unknown = set(spec) - _FAULT_KEYS
    if unknown:
        raise ValueError("unknown fault key(s): %s" % ", ".join(sorted(unknown)))
    status, body = spec.get("status"), spec.get("body")
    fault = {"status": None if status is None else int(status), "count": int(spec.get("count", 1)),
             "retry_after": spec.get("retry_after"), "drop": bool(spec.get("drop", False)),
             "delay": float(spec.get("delay") or 0), "path": _api_path(spec.get("path") or ""),
             "body": body.decode("latin-1") if isinstance(body, bytes) else body}
    if body is not None and not isinstance(fault["body"], str):
        raise ValueError("a fault body is text")
    if status is not None and not 400 <= fault["status"] <= 599:
        raise ValueError("a fault status must be 4xx or 5xx")
    if fault["count"] < 1 or fault["delay"] < 0:
        raise ValueError("a fault needs count >= 1 and delay >= 0")
    if fault["status"] is None and not fault["drop"] and not fault["delay"] and fault["body"] is None:
        raise ValueError("a fault needs status, drop, delay or body")
    return fault


# --- HTTP ------------------------------------------------------------------------------

class Request:
    """What the backend needs of an HTTP request."""

    def __init__(self, method, path, query, headers, body):
        self.method, self.path, self.query, self.headers, self.body = \
            method, path, query, headers, body


_API_ROUTES = [
    ("GET", r"samples", "list_samples"), ("POST", r"samples", "upload"),
    ("GET", r"samples/(\d+)", "get_sample"),
    ("POST", r"analyses", "start_analysis"), ("GET", r"analyses/([^/]+)", "get_analysis"),
    ("GET", r"tasks/(\d+)", "get_task"),
    ("GET", r"license", "license"), ("GET", r"platforms", "platforms"),
    ("GET", r"formats", "formats"),
]


def _route(routes, method, path):
    """(handler name, arguments) for a method and a relative path."""
    allowed = False
    for route_method, pattern, name in routes:
        match = re.fullmatch(pattern, path)
        if match and route_method == method:
            return name, match.groups()
        allowed = allowed or bool(match)
    if allowed:
        raise ApiError(405, {"message": 'method "%s" not allowed' % method})
    raise ApiError(404, {"message": "not found"})


class _Controls:
    """The /_sim/ endpoints: JSON in, JSON out, no authentication."""

    routes = [("GET", "stats", "stats"), ("POST", "faults", "faults"),
              ("DELETE", "faults", "clear_faults"), ("POST", "reset", "reset"),
              ("GET", "config", "get_config"), ("POST", "config", "set_config")]

    def __init__(self, backend):
        self.backend = backend

    def stats(self, request):
        return 200, self.backend.stats()

    def faults(self, request):
        try:
            specs = json.loads(request.body or b"null")
            specs = specs if isinstance(specs, list) else [specs]
            return 200, {"faults": [self.backend.add_fault(dict(spec)) for spec in specs]}
        except (ValueError, TypeError) as exc:
            raise ApiError(400, {"message": "bad fault: %s" % exc}) from None

    def clear_faults(self, request):
        self.backend.clear_faults()
        return 200, {"faults": []}

    def reset(self, request):
        self.backend.reset()
        return 200, {"reset": True}

    def get_config(self, request):
        return 200, dict(self.backend.settings)

    def set_config(self, request):
        try:
            return 200, self.backend.configure(**_json_object(request.body))
        except (ValueError, TypeError) as exc:
            raise ApiError(400, {"message": "bad setting: %s" % exc}) from None


class _RawBody(bytes):
    """A reply body sent as it is (a fault's malformed JSON)."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vxCube: clients reuse connections
    server_version = "vxCubeSim/1.0"

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def setup(self):
        super().setup()
        # Headers and body leave in separate writes: without this, Nagle and delayed
        # ACKs add 40 ms to every reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _handle(self):
        request = self._request()
        if request is None:
            return
        try:
            if request.path.startswith(CONTROL_PREFIX):
                status, payload, headers = self._control(request)
            elif request.path.startswith(API_PREFIX) or request.path + "/" == API_PREFIX:
                reply = self._api(request)
                if reply is None:
                    return self._drop()
                status, payload, headers = reply
            else:
                raise ApiError(404, {"message": "not found"})
        except ApiError as error:
            status, payload, headers = error.status, error.body, {}
        except Exception:
            log.exception("emulator error on %s %s", request.method, request.path)
            status, payload, headers = 500, {"message": "emulator error"}, {}
        self._reply(status, payload, headers)

    def _request(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._reply(411, {"message": "Content-Length is required"})
            return None
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        return Request(self.command, url.path, query, self.headers, body)

    def _control(self, request):
        controls = _Controls(self.server.backend)
        name, args = _route(controls.routes, request.method,
                            request.path[len(CONTROL_PREFIX):].strip("/"))
        return (*getattr(controls, name)(request, *args), {})

    def _api(self, request):
        """(status, payload, headers), or None to drop the connection."""
        backend = self.server.backend
        fault = backend.take_fault(_api_path(request.path))
        if fault:
            time.sleep(fault["delay"])
            if fault["drop"]:
                return None
            if fault["status"]:
                headers = {"Retry-After": str(fault["retry_after"])} \
                    if fault["retry_after"] is not None else {}
                return fault["status"], {"message": "simulated fault"}, headers
            if fault["body"] is not None:
                return 200, _RawBody(fault["body"].encode("latin-1")), {}
        backend.authorised(request.headers.get("Authorization"))
        name, args = _route(_API_ROUTES, request.method, _api_path(request.path))
        return (*getattr(backend, name)(request, *args), {})

    def _drop(self):
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _reply(self, status, payload, headers=None):
        body = payload if isinstance(payload, _RawBody) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients that time out or that we drop leave broken pipes behind: expected here.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class VxcubeSim:
    """The emulator as a background HTTP server: ``VxcubeSim().start()``, ``.url``, ``.stop()``."""

    def __init__(self, host="127.0.0.1", port=0, api_key=DEFAULT_API_KEY, analysis_time=1.0,
                 **settings):
        self.host = host
        self.port = port
        self.api_key = api_key
        self.backend = SimBackend(api_key, analysis_time, **settings)
        self._server = None
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def url(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d" % (host, self.port)

    def start(self):
        server_class = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self.port), _Handler)
        self._server.backend = self.backend
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="vxcube-sim", daemon=True)
        self._thread.start()
        log.info("vxCube emulator listening on %s", self.url)
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def set_fault(self, status=None, *, count=1, retry_after=None, drop=False, delay=None,
                  path=None, body=None):
        """Make the next ``count`` API requests (under ``path``) fail as described."""
        return self.backend.add_fault({"status": status, "count": count,
                                       "retry_after": retry_after, "drop": drop,
                                       "delay": delay, "path": path, "body": body})

    def clear_faults(self):
        self.backend.clear_faults()

    def stats(self):
        return self.backend.stats()

    def reset(self):
        self.backend.reset()

    def configure(self, **settings):
        return self.backend.configure(**settings)


# --- command line ------------------------------------------------------------------------

def parse_duration(text):
    """Seconds from "2s", "500ms", "1.5", "1m" or "1h"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not match:
        raise ValueError("not a duration: %r" % text)
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


def parse_listen(text):
    """(host, port) from "host:port", "[v6]:port", ":port" or "port"."""
    match = re.fullmatch(r"(?:\[([^\]]+)\]|([^:]*)):(\d+)|(\d+)", text.strip())
    if not match:
        raise ValueError("not a listen address: %r" % text)
    host = match.group(1) or match.group(2) or "127.0.0.1"
    return host, int(match.group(3) or match.group(4))


def _count(text):
    value = int(text)
    if value < 0:
        raise ValueError("not a count: %r" % text)
    return value


def _argument(parse):
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="vxgate vxcube-sim",
        description="Run a Dr.Web vxCube API emulator (markers: EICAR, VXGATE-TEST-SUSPICIOUS, "
                    "VXGATE-TEST-FAIL; controls under /_sim/).")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, type=_argument(parse_listen),
                        help="host:port to listen on (default %(default)s; port 0 = any)")
    parser.add_argument("--key", default=DEFAULT_API_KEY,
                        help="API key clients must send (default: a fixed demo key)")
    parser.add_argument("--analysis-time", default="2s", type=_argument(parse_duration),
                        help="emulated analysis time, e.g. 2s or 500ms (default %(default)s)")
    parser.add_argument("--uploads-total", default=100000, type=_argument(_count),
                        help="licence quota: uploads of new content before every further one "
                             "is refused with 403 (default %(default)s)")
    args = parser.parse_args(argv)
    host, port = args.listen
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sim = VxcubeSim(host, port, api_key=args.key, analysis_time=args.analysis_time,
                    uploads_total=args.uploads_total).start()
    print(sim.url, flush=True)
    if args.key == DEFAULT_API_KEY:
        print("API key: %s" % DEFAULT_API_KEY, file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
