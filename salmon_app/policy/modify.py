"""Applying a hook's scheduled modifications to the raw message, and ``RepackPassword``.

Edits are splices into the original bytes: a header edit rewrites only the top header
block, a repack replaces only the bytes of its part, and everything else passes through
byte for byte (re-serialising with the ``email`` package would re-encode MIME and break
the DKIM signatures of untouched parts). With no modifications the very same bytes object
comes back. Repacked files go into AES-256 zip archives (pyzipper); each archive gets an
identifier, shown to the recipient and logged, from which ``HMAC(<secret>)`` derives its
password.
"""
import base64
import email.header
import email.utils
import hmac
import io
import logging
import re
import secrets

import pyzipper

from salmon_app.compose import one_line

from . import mime
from .result import HEADER_OPS, Decision

log = logging.getLogger("vxgate.policy")

_SPEC = re.compile(r"\s*(none|plain|hmac)\s*(?:\((.*)\))?\s*\Z", re.I | re.S)


class RepackPassword:
    """The ``RepackPassword`` setting: ``None``, ``Plain(<password>)`` or ``HMAC(<secret>)``.

    ``HMAC``: the password of an archive is the first 16 hex digits of
    HMAC-SHA256(secret, identifier), the identifier being the one printed in the notice
    next to the archive. An administrator recovers it with
    ``RepackPassword.parse("HMAC(<secret>)").password_for("<identifier>")`` or
    ``printf %s '<identifier>' | openssl dgst -sha256 -hmac '<secret>'`` (first 16 digits).
    """
    __slots__ = ("kind", "_secret")

    def __init__(self, kind, secret=None):
        self.kind, self._secret = kind, secret

    @classmethod
    def parse(cls, text):
        match = _SPEC.match(str(text))
        kind = match and match.group(1).lower()
        if not kind or (kind == "none") != (match.group(2) is None) or \
                (kind != "none" and not match.group(2)):
            raise ValueError("RepackPassword must be None, Plain(<password>) or "
                             "HMAC(<secret>) with a non-empty password or secret")
        return cls({"none": "None", "plain": "Plain", "hmac": "HMAC"}[kind], match.group(2))

    def password_for(self, identifier):
        if self.kind == "Plain":
            return self._secret
        if self.kind == "HMAC":
            return hmac.new(self._secret.encode(), identifier.encode(), "sha256").hexdigest()[:16]
        return None

    def __repr__(self):
        return "RepackPassword(%s)" % (self.kind if self.kind == "None" else self.kind + "(***)")

    def __eq__(self, other):
        return isinstance(other, RepackPassword) and \
            (self.kind, self._secret) == (other.kind, other._secret)

    __hash__ = None


NO_PASSWORD = RepackPassword("None")


def apply_modifications(raw, decision_or_modifications, *, password=NO_PASSWORD, queue_id=""):
    """The message ``raw`` with the scheduled modifications applied (``raw`` itself if none).

    Modifications are the dicts of ``Decision.modifications``: ``{"op": "add_header_field"
    | "change_header_field", "name", "value"}`` and ``{"op": "repack", "path", "password",
    "message"}`` (``path`` None: the whole message; ``password``: a RepackPassword that
    overrides ``password``, set from ``ctx.modifier.repack_password``).
    """
    ops = decision_or_modifications.modifications \
        if isinstance(decision_or_modifications, Decision) else list(decision_or_modifications)
    if not ops:
        return raw
    eol = mime.line_ending(raw)
    repacks = [op for op in ops if op["op"] == "repack"]
    whole = next((op for op in repacks if not op.get("path")), None)
    out = raw
    if whole:   # the whole message is archived: repacking its parts too would be pointless
        out = _repack(mime.parse(raw), whole, password, queue_id, eol, whole=True)
    elif repacks:
        out = _repack_parts(raw, repacks, password, queue_id, eol)
    headers = [op for op in ops if op["op"] in HEADER_OPS]
    return _edit_headers(out, headers, eol) if headers else out


def _repack_parts(raw, repacks, password, queue_id, eol):
    root = mime.parse(raw)
    parts = {}
    for op in repacks:
        part = root.part_at(op["path"])
        if part is None:
            raise ValueError("no MIME part at path %r" % op["path"])
        parts.setdefault(part.path, (part, op))
    # A part inside another repacked part travels in that part's archive.
    chosen = [(p, op) for p, op in parts.values()
              if not any(q is not p and q.start <= p.start and p.end <= q.end
                         for q, _ in parts.values())]
    out, pos = [], 0
    for part, op in sorted(chosen, key=lambda item: item[0].start):
        out += [raw[pos:part.start], _repack(part, op, password, queue_id, eol)]
        pos = part.end
    out.append(raw[pos:])
    return b"".join(out)


def _repack(part, op, password, queue_id, eol, whole=False):
    """The bytes that replace ``part``: its non-content header fields kept, its content
    turned into multipart/mixed with a notice and the archive."""
    if whole:
        name, content, archive = "message.eml", part.raw, "quarantine.zip"
    else:
        name = part.name or "attachment-%s.bin" % part.path
        content, archive = part.decoded, one_line(name, limit=200) + ".zip"
    shown = one_line(name, limit=200)    # the sender's file name: in headers, the notice, the log
    identifier = "%s-%s" % (queue_id or "vxgate", secrets.token_hex(4))
    chosen = op.get("password") or password or NO_PASSWORD
    secret = chosen.password_for(identifier)
    log.info("%s: repacked %s as %s, identifier %s", queue_id or "-",
             "the message" if whole else "part %s (%s)" % (part.path, shown), archive, identifier)
    boundary = "=_vxgate_" + secrets.token_hex(12)
    notice = _notice(shown, archive, identifier, chosen.kind, op.get("message") or "")
    body = [
        b"--%s" % boundary.encode(),
        b"Content-Type: text/plain; charset=\"utf-8\"",
        b"Content-Transfer-Encoding: base64", b"", _base64(notice.encode(), eol),
        b"--%s" % boundary.encode(),
        b"Content-Type: application/zip; " + _param("name", archive),
        b"Content-Disposition: attachment; " + _param("filename", archive),
        b"Content-Transfer-Encoding: base64", b"",
        _base64(_zip(name, content, secret), eol),
        b"--%s--" % boundary.encode()]
    kept = [part.raw[f.start:f.end] for f in part.fields
            if not f.name.lower().startswith("content-") and f.name.lower() != "mime-version"]
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += eol
    header = [b"MIME-Version: 1.0"] if part.start == 0 or part.header("MIME-Version") else []
    header.append(b"Content-Type: multipart/mixed; boundary=\"%s\"" % boundary.encode())
    tail = eol if part.end == len(part.raw) else b""   # the message ends with a line break
    return b"".join(kept) + eol.join(header + [b""] + body) + tail


def _notice(name, archive, identifier, kind, message):
    lines = ["The mail gateway moved %s into the attached archive %s so that it cannot be "
             "opened by accident." % ("the original message" if name == "message.eml"
                                      else '"%s"' % name, archive)]
    if message.strip():
        lines.append(message.strip())
    lines.append({
        "None": "The archive is not password protected. Open it only if you trust its sender.",
        "Plain": "The archive is password protected; your mail administrator has the password.",
        "HMAC": "The archive is password protected; your mail administrator can give you "
                "its password for the identifier below."}[kind])
    lines.append("Identifier: %s" % identifier)
    return "\n\n".join(lines) + "\n"


def zip_archive(name, content, password):
    """An AES-encrypted zip holding ``content`` as ``name`` (no encryption without a password)."""
    return _zip(name, content, password)


def _zip(name, content, password):
    buffer = io.BytesIO()
    encryption = {"encryption": pyzipper.WZ_AES} if password else {}
    # Level 1: the archive is about safety, not size, and large files are often packed.
    with pyzipper.AESZipFile(buffer, "w", compression=pyzipper.ZIP_DEFLATED, compresslevel=1,
                             **encryption) as zf:
        if password:
            zf.setpassword(password.encode())
        zf.writestr(name, content)
    return buffer.getvalue()


def _base64(data, eol):
    return base64.encodebytes(data).rstrip(b"\n").replace(b"\n", eol)


def _param(key, value):
    if value.isascii() and value.isprintable() and "=?" not in value:   # clients decode =?..?= in quotes
        return b'%s="%s"' % (key.encode(), value.replace("\\", "\\\\").replace('"', '\\"').encode())
    return b"%s*=%s" % (key.encode(), email.utils.encode_rfc2231(value, "utf-8").encode())


def _field(name, value, eol):
    value = one_line(value, limit=2000)
    if value.isascii() and "=?" not in value and len(name) + len(value) < 996:
        return ("%s: %s" % (name, value)).encode() + eol
    # utf-8 encoded words even for ASCII: they fold anywhere (a long ASCII word cannot), and
    # text that looks like an encoded word is shown as it is instead of being decoded again
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep=eol.decode())
    return ("%s: %s" % (name, encoded)).encode() + eol


def _edit_headers(raw, ops, eol):
    root = mime.parse(raw)
    chunks = [raw[f.start:f.end] for f in root.fields]
    names = [f.name.lower() for f in root.fields]
    if chunks and not chunks[-1].endswith(b"\n"):
        chunks[-1] += eol
    for op in ops:
        line = _field(op["name"], op["value"], eol)
        key = op["name"].lower()
        if op["op"] == "change_header_field" and key in names:
            chunks[names.index(key)] = line
        else:   # milter semantics: adding appends; changing a missing field adds it
            chunks.append(line)
            names.append(key)
    return b"".join(chunks) + raw[root.header_end:]
