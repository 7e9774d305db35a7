"""What a hook's ``ctx`` is made of on the Python side: the envelope, the vxCube results and
the callbacks through which the Lua side reads the message lazily.

Lua gets only plain values from here, never a Python object: every callback returns
``(True, value, ...)`` or ``(False, error text)`` with bytes, numbers, booleans or None, and
the host Lua code (``sandbox.py``) turns that into tables or a Lua error. Strings cross as
UTF-8 bytes because the Lua runtime is created without an encoding (see ``sandbox.py``).
"""
import functools
import ipaddress
from dataclasses import dataclass, field

from salmon_app.verdict import CAUSES, TASK_VERDICTS, Verdict, cause_kind, cause_of, task_verdict, worst_cause

from . import drweb, mime


@dataclass
class Envelope:
    mail_from: str                       # "" for the null sender
    rcpt_to: list
    helo: str = ""
    client: dict = field(default_factory=dict)   # hostname, ip, port, family (XFORWARD)
    queue_id: str = ""


@functools.lru_cache(maxsize=4096)
def _family(ip):
    try:
        return "ipv%d" % ipaddress.ip_address(ip).version
    except ValueError:
        return ""


def envelope_view(envelope):
    """The envelope's part of ctx, ready for Lua as ``to_lua_plain`` makes data: built so at
    once (it is made for every message, and the generic walk took half of the view's time)."""
    plain = to_lua_plain
    client = envelope.client or {}
    ip = str(client.get("ip") or "")
    if ip[:5].upper() == "IPV6:":     # Postfix's XFORWARD ADDR form; hooks compare plain addresses
        ip = ip[5:]
    return {
        b"from": plain(envelope.mail_from or ""), b"to": [plain(a) for a in envelope.rcpt_to],
        b"helo": plain(envelope.helo), b"queue_id": plain(envelope.queue_id),
        b"sender": {b"hostname": plain(str(client.get("hostname") or "")), b"ip": plain(ip),
                    b"port": int(client.get("port") or 0),
                    b"family": plain(str(client.get("family") or _family(ip)))},
    }


_LABELS = {v.label for v in Verdict}


def _label(value):
    """Our verdict label for a verdict given either on our scale or as vxCube's task verdict."""
    try:
        return Verdict.parse(value).label
    except ValueError:
        return TASK_VERDICTS.get(value, Verdict.UNCHECKED).label


def _task_view(task):
    raw = task.get("verdict")
    # A task already on our scale is taken as it is; vxCube's own verdicts count only for
    # a successful task, as everywhere else.
    label = raw if raw in _LABELS and raw != "none" else task_verdict(task).label
    rules = task.get("rules") or {}
    return {"platform": task.get("platform"), "status": task.get("status"), "verdict": label,
            "vxcube_verdict": raw, "maliciousness": task.get("maliciousness"),
            "rules": {kind: list(rules.get(kind) or []) for kind in
                      ("malicious", "suspicious", "neutral")}}


def vxcube_view(analysis):
    """The analysis dict as the hook sees it (VxcubeResult with VxcubeAnalysis/VxcubeTask)."""
    analysis = analysis or {}
    files = [{"name": f.get("name"), "type": f.get("type"), "size": f.get("size"),
              "sha256": f.get("sha256"), "verdict": _label(f.get("verdict") or "unchecked"),
              "maliciousness": f.get("maliciousness"), "analysis_id": f.get("analysis_id"),
              "path": str(f["path"]) if f.get("path") else None,
              "reason": f.get("reason") or "",
              "tasks": [_task_view(t) for t in f.get("tasks") or ()]}
             for f in analysis.get("files") or ()]
    for view, f in zip(files, analysis.get("files") or ()):
        view["cause"] = _file_cause(view["verdict"], f)
    worst = Verdict.worst(Verdict.parse(f["verdict"]) for f in files)
    verdict = _label(analysis["verdict"]) if analysis.get("verdict") else worst.label
    counts = {v.label: 0 for v in Verdict}
    for f in files:
        counts[f["verdict"]] += 1
    cause = worst_cause(f["cause"] for f in files)
    return {"verdict": verdict, "files": files, "counts": counts,
            "cause": cause, "cause_kind": cause_kind(cause),
            "held": float(analysis.get("held") or 0), "hold_expired": bool(analysis.get("hold_expired")),
            "hold_fallback": str(analysis.get("hold_fallback") or "quarantine")}


def _file_cause(label, analysed):
    """Why a file is unchecked ("" unless it is): the stored token, else read from its reason."""
    if label != Verdict.UNCHECKED.label:
        return ""
    cause = analysed.get("cause")
    return cause if cause in CAUSES else cause_of(analysed.get("reason"), label)


@functools.cache
def _no_analysis():
    """to_lua_plain(vxcube_view({})), made once: most mail has nothing analysed."""
    return to_lua_plain(vxcube_view({}))


def lua_view(envelope, analysis):
    """The hook's ctx as plain data for ``LuaRuntime.table_from`` (which copies it into new Lua
    tables each time, so a view shared between calls is never seen twice by a hook)."""
    view = envelope_view(envelope)
    view[b"vxcube"] = to_lua_plain(vxcube_view(analysis)) if analysis else _no_analysis()
    return view


def to_lua_plain(value):
    """Python data with every str as UTF-8 bytes, ready for ``LuaRuntime.table_from``."""
    kind = type(value)   # exact types: this runs for every value of every message
    if kind is str:
        return value.encode("utf-8", "surrogateescape")
    if kind is dict:
        return {to_lua_plain(k): to_lua_plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [to_lua_plain(v) for v in value]
    return value


def _text(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


# Room a callback leaves in the Lua state: lupa hangs when pushing a value the state has no
# memory for, so a result that does not fit is refused as Lua's own memory error.
MEMORY_RESERVE = 1 << 20
OUT_OF_MEMORY = b"not enough memory"   # Lua's message, which the host treats as a kill


def _exported(method):
    """Never let an exception (a Python object) into Lua: report it as an error text."""
    @functools.wraps(method)
    def call(self, *args):
        try:
            values = tuple(to_lua_plain(v) for v in method(self, *args))
        except Exception as exc:   # noqa: BLE001 - the hook gets the text, Lua raises it
            return False, to_lua_plain(str(exc) or type(exc).__name__)
        size = sum(len(v) for v in values if type(v) is bytes)
        if size + MEMORY_RESERVE > self.memory_left():
            return False, OUT_OF_MEMORY
        return (True,) + values
    return call


@dataclass(frozen=True)
class MessageFile:
    """A stored message the hook reads only if it looks at the message (most decide on the
    verdict alone): the worker sends this path to its hook process instead of the bytes."""
    path: str

    def read(self):
        with open(self.path, "rb") as handle:
            return handle.read()


class Bridge:
    """The callbacks of one runtime; ``message`` and ``queue_id`` are set per run."""

    BODY_FIELDS = {"raw": lambda p: p.body_raw, "decoded": lambda p: p.decoded,
                   "text": lambda p: p.text, "md5": lambda p: p.digest("md5"),
                   "sha1": lambda p: p.digest("sha1"), "sha256": lambda p: p.digest("sha256")}
    KINDS = {"parts": lambda p: True, "leaf_parts": lambda p: p.is_leaf,
             "files": lambda p: p.is_file, "attachments": lambda p: p.is_attachment,
             "text_parts": lambda p: p.is_text}

    def __init__(self, base_dir, max_file_bytes):
        self.base_dir, self.max_file_bytes = base_dir, max_file_bytes
        self._raw, self._message, self.queue_id = None, None, ""
        self.memory_left = lambda: 0   # set by the runtime to its Lua state's free memory

    @property
    def message(self):
        # Parsed on first use: most hooks decide on the verdict alone.
        if self._message is None:
            raw = self._raw
            self._message = mime.parse(raw if isinstance(raw, (bytes, bytearray)) else raw.read())
        return self._message

    def callbacks(self):
        return {name: getattr(self, name) for name in (
            "part_at", "info", "fields", "raw", "body", "search", "select",
            "log", "regex", "read_list")}

    def _part(self, path):
        part = self.message.part_at(_text(path))
        if part is None:
            raise ValueError("no MIME part at path %r" % _text(path))
        return part

    @_exported
    def part_at(self, below, path):
        part = self._part(below).part_at(_text(path))
        return (part.path if part else None,)

    @_exported
    def info(self, path):
        part = self._part(path)
        return (part.content_type, part.name) + tuple(c.path for c in part.children)

    @_exported
    def fields(self, path):
        return tuple(x for f in self._part(path).fields if f.name for x in (f.name, f.value))

    @_exported
    def raw(self, path):
        part = self._part(path)
        return (part.raw[part.start:part.end],)

    @_exported
    def body(self, path, key):
        return (self.BODY_FIELDS[_text(key)](self._part(path)),)

    @_exported
    def search(self, path, scope, flags, *patterns):
        part, scope = self._part(path), _text(scope)
        patterns = [_text(p) for p in patterns]
        texts = []
        if scope in ("header", "all"):
            texts += ("%s: %s" % (f.name, f.value) for f in part.fields if f.name)
        if scope == "body":
            text = part.text
            texts.append(text if text is not None else _text(part.decoded))
        if scope == "all":
            texts += (p.text for p in part.walk() if p.is_text)
        return (any(drweb.search(patterns, t, flags) for t in texts),)

    @_exported
    def select(self, path, kind, name_re=None, name_re_not=None, first_only=False):
        # Names are matched whole and without case: [[.*\.exe]] must catch "INVOICE.EXE".
        wanted = self.KINDS[_text(kind)]
        found = []
        for part in self._part(path).walk():
            if not wanted(part):
                continue
            name = part.name or ""
            if name_re is not None and not (part.name and drweb.match(
                    [_text(name_re)], name, drweb.IGNORE_CASE)):
                continue
            if name_re_not is not None and drweb.match([_text(name_re_not)], name,
                                                       drweb.IGNORE_CASE):
                continue
            found.append(part.path)
            if first_only:
                break
        return tuple(found)

    @_exported
    def log(self, level, message):
        drweb.write_log(self.queue_id, _text(level), _text(message))
        return ()

    @_exported
    def regex(self, how, text, flags, *patterns):
        test = drweb.match if how == b"match" else drweb.search
        return (test([_text(p) for p in patterns], _text(text), flags),)

    @_exported
    def read_list(self, path):
        return tuple(drweb.read_list(_text(path), self.base_dir, self.max_file_bytes))

    def start(self, raw, queue_id):
        self._raw, self._message, self.queue_id = raw, None, queue_id

    def finish(self):
        self._raw = self._message = None
