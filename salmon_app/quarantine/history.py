"""Everything about one message for ``show``: envelope, client, headers, MIME parts, verdicts, life.

``describe()`` gathers it into one dict (also the ``--json`` output), reading the database in
one read transaction (a consistent snapshot that never blocks the daemon's writers) and the
stored file when it is still there. MIME parts are parsed with the email package's compat32
policy, which records defects instead of raising; whatever still goes wrong (absurd nesting,
a broken part) is reported as a problem of that message, never as a traceback. ``render()``
lays the dict out for people. The history starts with the reception (from the record itself:
the gateway logs no event for it) and lists every Event with its time.
"""
import email.parser
import email.utils
import hashlib
import json
import os
from email import policy
from email.header import decode_header, make_header

from salmon_app.analysis import FileCheck
from salmon_app.storage import models
from salmon_app.storage.models import Event, Message, Recipient, Release
from salmon_app.quarantine import render
from salmon_app.quarantine.query import release_dict
from salmon_app.quarantine.store import QuarantineError, client_of

HEADER_LIMIT = 1024 * 1024    # read at most this much looking for the end of the headers
PART_LIMIT = 500              # list at most this many MIME parts
DEPTH_LIMIT = 50


def describe(store, queue_id):
    """A dict with everything known about ``queue_id`` (QuarantineError when there is none)."""
    with store.database.atomic():      # deferred: a read snapshot, no write lock
        row = store.lookup(queue_id)
        recipients = list(Recipient.select().where(Recipient.message == row.id).order_by(Recipient.id))
        events = list(Event.select().where(Event.message == row.id).order_by(Event.time, Event.id))
        checks = list(FileCheck.select().where(FileCheck.message == row.id).order_by(FileCheck.id))
        release = Release.get_or_none(Release.message == row.id, Release.state == "done")
        children = list(Message.select(Message.id, Message.mode, Message.state, Message.subject)
                        .where(Message.parent == row.id).order_by(Message.created))
    client = client_of(row)
    info = {
        "id": row.id, "mode": row.mode, "state": row.state, "answered": bool(row.answered),
        "created": render.iso(row.created), "updated": render.iso(row.updated),
        "size": row.size, "sha256": row.sha256, "body_8bit": bool(row.body_8bit),
        "smtputf8": bool(row.smtputf8), "verdict": row.verdict, "action": row.action,
        "reason": row.reason, "attempts": row.attempts, "recoveries": row.recoveries,
        "next_hop_id": row.next_hop_id, "last_reply": row.last_reply, "parent": row.parent,
        "subject": row.subject, "header_from": row.header_from, "message_id": row.message_id,
        "envelope": {
            "mail_from": row.mail_from, "mail_params": row.params.get("mail") or {},
            "rcpt_to": row.rcpt_to, "rcpt_params": row.params.get("rcpt") or {},
        },
        "client": {k: v for k, v in client.items() if not str(k).startswith("_")},
        "file": _file_info(store, row),
        "headers": None, "parts": None, "problems": [],
        "files": [_check_dict(c) for c in checks],
        "recipients": [{"address": r.address, "state": r.state, "reply": r.reply} for r in recipients],
        "related": [{"id": c.id, "mode": c.mode, "state": c.state, "subject": c.subject} for c in children],
        "history": [{"time": render.iso(row.created), "epoch": row.created, "kind": "received",
                     "text": _received_text(row, client)}]
        + [{"time": render.iso(e.time), "epoch": e.time, "kind": e.kind, "text": e.text} for e in events],
        "released": release_dict(release),
    }
    if info["file"]["present"] or info["file"]["in_database"]:
        try:
            with store.open_message(row) as handle:
                head = handle.read(HEADER_LIMIT)
                info["headers"] = _header_lines(head)
                handle.seek(0)
                raw = handle.read()
        except (OSError, QuarantineError) as exc:
            info["problems"].append("cannot read the file: %s" % exc)
        else:
            info["parts"], problems = mime_parts(raw)
            info["problems"].extend(problems)
            if len(raw) != row.size:
                info["problems"].append("file is %d bytes, the record says %d" % (len(raw), row.size))
            elif row.sha256 and hashlib.sha256(raw).hexdigest() != row.sha256:
                info["problems"].append("file SHA-256 differs from the one recorded at reception")
    return info


def _json(text, default):
    try:
        value = json.loads(text or "")
        return value if isinstance(value, type(default)) else default
    except ValueError:
        return default


def _file_info(store, row):
    path = store.file_path(row.id)
    local = store.local(row)
    present = local and os.path.exists(path)
    modified = store.modified_path(row.id)
    return {"path": path if local else None, "present": present, "recorded": bool(row.has_file),
            "node": row.node, "in_database": models.has_kept_body(row.id),
            "modified_copy": modified if local and os.path.exists(modified) else None}


def _received_text(row, client):
    origin = client.get("addr") or client.get("peer_ip") or "?"
    name = client.get("name")
    return "from=<%s> to=%s size=%d client=%s" % (
        row.mail_from, ",".join("<%s>" % a for a in row.rcpt_to), row.size,
        "%s[%s]" % (name, origin) if name and name != "[UNAVAILABLE]" else origin)


def _check_dict(check):
    tasks = _json(check.tasks_json, [])
    return {
        "name": check.name, "path": check.path, "type": check.type, "size": check.size,
        "sha256": check.sha256, "verdict": check.verdict or "pending",
        "maliciousness": check.maliciousness, "cached": bool(check.cached),
        "analysis_id": check.analysis_id, "reason": check.reason,
        "tasks": [{"id": t.get("id"), "platform": t.get("platform_code") or t.get("platform") or "",
                   "status": t.get("status", ""), "verdict": t.get("verdict") or "none",
                   "maliciousness": t.get("maliciousness")} for t in tasks if isinstance(t, dict)],
    }


def _header_lines(head):
    """The header block's lines (folded lines kept), decoded for display without guessing."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    block = head if end < 0 else head[:end]
    return [line.decode("utf-8", "backslashreplace") for line in block.splitlines()]


def _decoded(value):
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value))))
    except Exception:
        return str(value)


def mime_parts(raw):
    """([part dicts], [problems]) of a message; never raises."""
    problems = []
    try:
        message = email.parser.BytesParser(policy=policy.compat32).parsebytes(raw)
    except Exception as exc:    # the parser is lenient; this is only for the truly absurd
        return [], ["cannot parse the MIME structure: %s: %s" % (type(exc).__name__, exc)]
    parts = []
    stack = [("1", message, 0)]
    while stack:
        number, part, depth = stack.pop()
        if len(parts) >= PART_LIMIT:
            problems.append("more than %d MIME parts; the rest are not listed" % PART_LIMIT)
            break
        try:
            parts.append(_part_dict(number, part, depth))
        except Exception as exc:
            problems.append("part %s: %s: %s" % (number, type(exc).__name__, exc))
            continue
        if part.is_multipart():
            if depth >= DEPTH_LIMIT:
                problems.append("part %s: nested deeper than %d levels; not listed further" % (number, DEPTH_LIMIT))
                continue
            children = part.get_payload()
            if not isinstance(children, list):
                continue
            labels = ["%s.%d" % (number, i + 1) for i in range(len(children))]
            for label, child in reversed(list(zip(labels, children))):
                if hasattr(child, "is_multipart"):
                    stack.append((label, child, depth + 1))
    return parts, problems


def _part_dict(number, part, depth):
    ctype = part.get_content_type()
    info = {"part": number, "depth": depth, "type": ctype, "disposition": None, "filename": None,
            "encoding": None, "size": None, "sha256": None, "defects": []}
    try:
        info["disposition"] = part.get_content_disposition()
    except Exception:
        pass
    try:
        name = part.get_filename() or part.get_param("name")
        if isinstance(name, tuple):    # RFC 2231 triple
            name = email.utils.collapse_rfc2231_value(name)
        info["filename"] = _decoded(name) if name else None
    except Exception:
        info["filename"] = None
    encoding = part.get("Content-Transfer-Encoding")
    info["encoding"] = str(encoding).strip().lower() if encoding is not None else None
    if not part.is_multipart():
        payload = part.get_payload(decode=True)
        if payload is None:
            payload = b""
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogateescape")
        info["size"] = len(payload)
        info["sha256"] = hashlib.sha256(payload).hexdigest()
    info["defects"] = sorted({type(d).__name__ for d in getattr(part, "defects", [])})
    return info


# ---------------------------------------------------------------- for people
def render_show(info):
    c = render.clean
    lines = []
    add = lines.append
    state = info["state"]
    if info["released"]:
        rel = info["released"]
        state += " (released %s by %s%s)" % (_local(rel["time"]), c(rel["user"]),
                                              ", %d times" % rel["count"] if rel["count"] > 1 else "")
    flags = "".join(text for text, on in ((", 8BITMIME", info["body_8bit"]), (", SMTPUTF8", info["smtputf8"])) if on)
    fields = [
        ("State", state),
        ("Mode", info["mode"]),
        ("Received", "%s%s" % (_local(info["created"]), "  (250 sent before the outcome)" if info["answered"] else "")),
        ("Updated", _local(info["updated"])),
        ("Size", "%s (%d bytes)%s" % (render.size(info["size"]), info["size"], flags)),
        ("SHA-256", info["sha256"] or "-"),
        ("From", c(info["header_from"]) or "-"),
        ("Subject", c(info["subject"]) or "-"),
        ("Message-ID", c(info["message_id"]) or "-"),
        ("File", _file_text(info["file"])),
    ]
    if info["file"]["modified_copy"]:
        fields.append(("Modified copy", info["file"]["modified_copy"]))
    fields += [
        ("Verdict", info["verdict"]),
        ("Action", c(info["action"]) or "-"),
        ("Reason", c(info["reason"]) or "-"),
        ("Last reply", c(info["last_reply"]) or "-"),
        ("Next hop id", c(info["next_hop_id"]) or "-"),
        ("Retries", "%d%s" % (info["attempts"], " (in flight at %d start-ups)" % info["recoveries"] if info["recoveries"] else "")),
    ]
    if info["parent"]:
        fields.append(("About", info["parent"]))
    add("Message %s" % info["id"])
    lines.extend(_fields(fields))

    env = info["envelope"]
    add("")
    add("Envelope")
    mail_params = " ".join("%s=%s" % (k, v) if v is not True else k for k, v in env["mail_params"].items())
    add("  MAIL FROM:<%s>%s" % (c(env["mail_from"]), " " + c(mail_params) if mail_params else ""))
    for address in env["rcpt_to"]:
        params = env["rcpt_params"].get(address) or {}
        extra = " ".join("%s=%s" % (k, v) for k, v in params.items())
        add("  RCPT TO:<%s>%s" % (c(address), " " + c(extra) if extra else ""))

    add("")
    add("Client")
    if info["client"]:
        lines.extend(_fields(sorted((str(k), c(v)) for k, v in info["client"].items())))
    else:
        add("  (not recorded)")

    add("")
    add("Headers")
    if info["headers"] is None:
        add("  (no stored file)")
    else:
        lines.extend("  " + c(line, keep_tabs=True) for line in info["headers"])

    add("")
    add("MIME parts")
    if info["parts"] is None:
        add("  (no stored file)")
    elif info["parts"]:
        rows = []
        for p in info["parts"]:
            name = c(p["filename"] or "")
            if p["disposition"] and name:
                name = "%s %s" % (p["disposition"], name)
            elif p["disposition"] == "attachment":
                name = "attachment"
            defects = (" [%s]" % ", ".join(p["defects"])) if p["defects"] else ""
            rows.append(["  " * p["depth"] + p["part"], c(p["type"]),
                         "-" if p["size"] is None else str(p["size"]),
                         p["sha256"] or "-", (name + defects).strip()])
        lines.extend("  " + line for line in render.table(["PART", "TYPE", "SIZE", "SHA-256", "NAME"], rows, right=(2,)))
    for problem in info["problems"]:
        add("  problem: %s" % c(problem))

    add("")
    add("Files analysed")
    if not info["files"]:
        add("  (none)")
    for f in info["files"]:
        score = " maliciousness %s" % f["maliciousness"] if f["maliciousness"] is not None else ""
        add("  %s  %s%s%s" % (c(f["name"]) or "(unnamed)", f["verdict"], score, "  (cached verdict)" if f["cached"] else ""))
        add("    type %s, %d bytes, sha256 %s%s" % (c(f["type"]) or "?", f["size"], f["sha256"],
                                                 ", path " + c(f["path"]) if f["path"] else ""))
        if f["analysis_id"]:
            add("    vxCube analysis %s" % c(f["analysis_id"]))
        for t in f["tasks"]:
            score = " (maliciousness %s)" % t["maliciousness"] if t["maliciousness"] is not None else ""
            add("    task %s on %s: %s, %s%s" % (t["id"], c(t["platform"]) or "?", c(t["status"]), c(t["verdict"]), score))
        if f["reason"]:
            add("    reason: %s" % c(f["reason"]))

    add("")
    add("Recipients")
    if info["recipients"]:
        rows = [[c(r["address"]), r["state"], c(r["reply"]) or "-"] for r in info["recipients"]]
        lines.extend("  " + line for line in render.table(["ADDRESS", "STATE", "REPLY"], rows))
    else:
        add("  (none)")

    if info["related"]:
        add("")
        add("Related messages")
        for r in info["related"]:
            add("  %s  %s %s  %s" % (r["id"], r["mode"], r["state"], c(r["subject"])))

    add("")
    add("History")
    kind_width = max(len(h["kind"]) for h in info["history"])
    for h in info["history"]:
        add("  %s  %-*s  %s" % (render.precise(h["epoch"]), kind_width, c(h["kind"]), c(h["text"])))
    return lines


def _local(iso_text):
    return iso_text[:19].replace("T", " ") if iso_text else "-"


def _fields(pairs):
    size = max(len(k) for k, _ in pairs) + 1
    return ["  %-*s %s" % (size, k + ":", v) for k, v in pairs]


def _file_text(file):
    if file["present"]:
        return file["path"]
    if file["in_database"]:
        return "in the database (node %s holds the spool file)" % file["node"] if file["recorded"] else "in the database"
    if file["recorded"] and file["path"] is None:
        return "in the spool of node %s" % file["node"]
    if file["recorded"]:
        return "missing from the spool (%s); run vxgate quarantine check" % file["path"]
    return "removed (no stored copy)"
