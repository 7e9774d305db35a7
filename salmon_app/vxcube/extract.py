"""Attachment extraction for the "upload the attachments of the configured file types"
procedure: parse a raw RFC 822 message with the standard library, return every file it
carries (attachments, inline parts with a file name, parts of attached messages) with its
type recognised by content, and mark the ones whose type is configured for analysis.
Types come from the bytes (puremagic, refined for PE, ZIP/OOXML and OLE containers), so an
.exe renamed .pdf is still "exe"; the file-name extension is used only when the content
says nothing. A part is addressed by its IMAP-style MIME path, a dotted string ("1",
"2.1", ...: RFC 3501 section numbers). Broken parts never raise: they are skipped and
recorded in ``Extraction.problems``.

What vxgate cannot open never disappears: a part nested too deeply, an ambiguous or broken
structure, a message fragment, an encrypted archive or a TNEF blob that does not parse
becomes a ``FileItem`` with a ``cause`` (a token of ``salmon_app.verdict.CAUSES``), which
the analysis records as unchecked with that cause. Files hidden where mail programs still
show them (uuencoded in a text body, inside winmail.dat, in an attached message, also one
sent base64-encoded) are extracted and analysed like any attachment.
"""
import email.errors
import email.parser
import email.policy
import hashlib
import io
import logging
import re
import struct
import zipfile
from dataclasses import dataclass, field

import puremagic

from salmon_app.headers import decode_words
from salmon_app.vxcube import containers

log = logging.getLogger("vxgate.vxcube.extract")

# Nesting deeper than this is an attack on the parser, not a real message.
MAX_DEPTH = 32

# puremagic names some formats by a rarer extension; say what administrators write.
_ALIASES = {"htm": "html", "jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff",
            "appimage": "elf"}

_PE_DLL_FLAG = 0x2000
_PE_X64_MACHINES = {0x8664, 0xAA64}

# OLE2 directory entries hold stream names in UTF-16LE; the first one found names the
# application (Word, Excel, PowerPoint, Outlook).
_OLE_STREAMS = (("WordDocument", "doc"), ("Workbook", "xls"), ("Book", "xls"),
                ("PowerPoint Document", "ppt"), ("__substg1.0_", "msg"))
_OLE_EXTENSIONS = {"doc", "dot", "xls", "xlt", "ppt", "pps", "msg", "msi", "pub", "vsd"}

_OOXML_DIRS = (("word/", "docx", "docm"), ("xl/", "xlsx", "xlsm"), ("ppt/", "pptx", "pptm"))

_EMAIL_HEADERS = {"from", "to", "cc", "subject", "date", "message-id", "mime-version",
                  "received", "return-path"}
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


@dataclass
class FileItem:
    """One file found in a message. ``path`` is the dotted MIME part path ("1.2")."""
    name: str
    content: bytes = field(repr=False)
    detected_type: str
    mime_type: str
    path: str
    selected: bool
    cause: str = ""         # why vxgate cannot have it analysed (a verdict.CAUSES token)
    cause_text: str = ""    # the same for people
    size: int = field(init=False)
    sha256: str = field(init=False)

    def __post_init__(self):
        self.size = len(self.content)
        self.sha256 = hashlib.sha256(self.content).hexdigest()


@dataclass
class Extraction:
    """The files of a message and what could not be read ("<path>: <reason>")."""
    files: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def selected(self):
        return [item for item in self.files if item.selected]

    def unopened(self, path, cause, text, name="", content=b""):
        """Record a part vxgate cannot open: it is always reported, whatever its type."""
        where = _dotted(path) if isinstance(path, list) else path
        self.problems.append("%s: %s" % (where or "message", text))
        self.files.append(FileItem(name=name or "part-%s" % (where or "message"), content=content,
                                   detected_type="", mime_type="", path=where, selected=True,
                                   cause=cause, cause_text=text))


# --- type detection -----------------------------------------------------------------

def extension_of(filename):
    """Lower-case extension of a file name ("" if none), in the same vocabulary as types."""
    match = re.search(r"\.([A-Za-z0-9]{1,10})$", (filename or "").strip())
    return _canonical(match.group(1)) if match else ""


def detect_type(content, filename=None):
    """Short lower-case type name of ``content``; the extension only when content says nothing."""
    return _content_type(content, filename) or extension_of(filename)


def _canonical(extension):
    extension = extension.lstrip(".").lower()
    return _ALIASES.get(extension, extension)


def _content_type(content, filename):
    if not content:
        return ""
    try:
        matches = puremagic.magic_string(content)
    except (puremagic.PureError, ValueError):
        return ""
    for signature, refine in _REFINERS:
        if any(m.offset == 0 and m.byte_match.startswith(signature) for m in matches):
            return refine(content, filename)
    return next((_canonical(m.extension) for m in matches if m.extension), "")


def pe_header(content):
    """(machine, characteristics) of a PE image, or None for anything else."""
    if len(content) < 0x40 or not content.startswith(b"MZ"):
        return None
    (offset,) = struct.unpack_from("<I", content, 0x3C)
    if content[offset:offset + 4] != b"PE\0\0" or len(content) < offset + 24:
        return None
    machine, = struct.unpack_from("<H", content, offset + 4)
    characteristics, = struct.unpack_from("<H", content, offset + 22)
    return machine, characteristics


def is_x64_pe(content):
    header = pe_header(content)
    return bool(header) and header[0] in _PE_X64_MACHINES


def _pe_type(content, filename):
    header = pe_header(content)
    # A bare "MZ" image (DOS program) is still an executable for the sandbox.
    return "dll" if header and header[1] & _PE_DLL_FLAG else "exe"


def _zip_type(content, filename):
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = set(archive.namelist())
            # Read only this small member: the archive itself may be a bomb.
            manifest = (archive.open("[Content_Types].xml").read(1 << 20)
                        if "[Content_Types].xml" in names else None)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError,
            NotImplementedError, EOFError, ValueError):
        return "zip"
    if manifest is not None:
        macros = b"macroEnabled" in manifest
        for prefix, plain, with_macros in _OOXML_DIRS:
            if any(name.startswith(prefix) for name in names):
                return with_macros if macros else plain
    if "AndroidManifest.xml" in names:
        return "apk"
    if "META-INF/MANIFEST.MF" in names:
        return "jar"
    return "zip"


def _ole_type(content, filename):
    for stream, kind in _OLE_STREAMS:
        if stream.encode("utf-16-le") in content:
            return kind
    # The container alone does not say which application wrote it; a name that
    # agrees with the container may tell (msi, pub, ...), any other name may not.
    extension = extension_of(filename)
    return extension if extension in _OLE_EXTENSIONS else "ole"


_REFINERS = ((b"MZ", _pe_type), (b"PK\x03\x04", _zip_type),
             (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", _ole_type))


def is_email(content, filename=None):
    """True for an RFC 822 message (by content, or by an .eml file name)."""
    if (filename or "").lower().endswith(".eml") or detect_type(content) == "eml":
        return True
    # puremagic misses mail that starts with e.g. MIME-Version: look at the header block.
    head = content[:16384].split(b"\n\n", 1)[0].replace(b"\r\n", b"\n").split(b"\n")
    if not head or not _HEADER_LINE.match(head[0]):
        return False
    names = {line.split(b":", 1)[0].decode("ascii", "replace").lower()
             for line in head if _HEADER_LINE.match(line)}
    return "from" in names and len(names & _EMAIL_HEADERS) >= 3


# --- MIME walking -------------------------------------------------------------------

def normalise_types(types):
    """A configured type list as the set detect_type() speaks; None stays None (= all)."""
    if types is None:
        return None
    return {_canonical(t.strip()) for t in types if t and t.strip(". ")}


def is_selected(detected_type, name, types):
    """Whether a file is to be analysed. A file whose *name* claims a configured type is
    analysed too, whatever its content: a disguised file must not slip through."""
    if types is None:
        return True
    return bool(detected_type in types or extension_of(name) in types)


def extract(raw, types=None):
    """Every file of the message ``raw`` (bytes) and the problems met, never raising."""
    result = Extraction()
    types = normalise_types(types)
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except Exception as exc:  # the parser is robust, but this is the last line of defence
        result.problems.append("message: cannot parse (%s)" % exc)
        return result
    _walk(message, [], types, result)
    if result.problems:
        log.info("attachment extraction: %s", "; ".join(result.problems))
    return result


def extract_files(raw, types=None):
    """The files of the message ``raw``; ``types=None`` selects all of them."""
    return extract(raw, types).files


# Defects that leave the parts of a multipart unknown: what a mail program shows may differ.
_STRUCTURE_DEFECTS = (email.errors.NoBoundaryInMultipartDefect,
                      email.errors.StartBoundaryNotFoundDefect,
                      email.errors.MultipartInvariantViolationDefect)
# Fields whose second copy mail programs may obey instead of the first (RFC 5322 allows one).
_SINGLE_FIELDS = ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition")


def _walk(part, path, types, result):
    for defect in part.defects:  # malformed but readable: note it and carry on
        result.problems.append("%s: %s" % (_dotted(path) or "message", type(defect).__name__))
    if len(path) > MAX_DEPTH:
        return result.unopened(path, "too-deep", "nested more than %d levels deep" % MAX_DEPTH)
    broken = [d for d in part.defects if isinstance(d, _STRUCTURE_DEFECTS)]
    if broken:
        result.unopened(path, "unparseable", "broken multipart structure (%s)" % type(broken[0]).__name__)
    for name in _SINGLE_FIELDS:
        values = {" ".join(str(v).lower().split()) for v in part.get_all(name) or ()}
        if len(values) > 1:
            result.unopened(path, "unparseable", "%d different %s fields" % (len(values), name))
    ctype = part.get_content_type()
    if path and ctype == "message/rfc822":
        _walk_attached_message(part, path, types, result)
    elif path and ctype == "message/partial":
        result.unopened(path, "unparseable", "message/partial: a fragment vxgate cannot put together")
    elif part.is_multipart():
        _walk_children(part.get_payload(), path, types, result)
    else:
        _take_leaf(part, path or [1], types, result)


def _walk_attached_message(part, path, types, result):
    # RFC 3501: the body of an attached message at "2" is "2.1"; its parts are "2.1", "2.2".
    if part.get("Content-Transfer-Encoding", "").strip().lower() in ("base64", "quoted-printable"):
        # Not allowed for message/rfc822 (RFC 2046 5.2.1), but mail programs decode it: so do we.
        inner = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(_decode_transfer(part))
    else:
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
    if inner is None:
        return result.unopened(path, "unparseable", "attached message without content")
    if inner.is_multipart():
        _walk_children(inner.get_payload(), path, types, result)
    else:
        _walk(inner, path + [1], types, result)


def _decode_transfer(part):
    """The decoded body of a message/* part sent with a content transfer encoding."""
    holder = email.message.Message()
    holder["Content-Transfer-Encoding"] = part.get("Content-Transfer-Encoding", "")
    body = part.get_payload()
    if isinstance(body, list):     # the parser took the encoded text for a message
        body = body[0].as_string() if body else ""
    holder.set_payload(body)
    return holder.get_payload(decode=True) or b""


def _walk_children(children, path, types, result):
    for number, child in enumerate(children, 1):
        try:
            _walk(child, path + [number], types, result)
        except Exception as exc:  # one broken part must not hide the others
            result.unopened(path + [number], "unparseable", "skipped (%s: %s)" % (type(exc).__name__, exc))


def _take_leaf(part, path, types, result):
    name = _filename(part)
    dotted = _dotted(path)
    if not _is_file(part, name):
        if part.get_content_maintype() == "text":
            for inner, content in containers.uuencoded_files(part.get_payload(decode=True) or b""):
                _add_file(result, types, _clean_name(inner), content, "application/x-uuencode", dotted)
        return
    content = part.get_payload(decode=True) or b""
    mime_type = part.get_content_type()
    if containers.is_tnef(content, mime_type, name):
        return _take_tnef(content, dotted, types, result, name or "winmail.dat")
    _add_file(result, types, name, content, mime_type, dotted)


def _take_tnef(content, dotted, types, result, name):
    try:
        found = containers.tnef_files(content)
    except containers.Unreadable as exc:
        return result.unopened(dotted, exc.cause, "%s: %s" % (name, exc), name=name, content=content)
    for number, (inner, data) in enumerate(found, 1):
        _add_file(result, types, _clean_name(inner) or "%s-%d" % (name, number), data, "application/ms-tnef", dotted)


def _add_file(result, types, name, content, mime_type, dotted):
    detected = detect_type(content, name)
    encrypted = containers.encryption(content, detected)
    result.files.append(FileItem(
        name=name or "attachment-%s.%s" % (dotted, detected or "bin"), content=content,
        detected_type=detected, mime_type=mime_type, path=dotted,
        selected=bool(encrypted) or is_selected(detected, name, types),
        cause="encrypted" if encrypted else "", cause_text=encrypted or ""))


def _is_file(part, name):
    return is_file_part(name, part.get_content_disposition(), part.get_content_maintype())


def is_file_part(name, disposition, maintype):
    """The one rule for "this leaf is a file" (the extractor's and the hook's ``files{}``).

    Message text is text/*; a part that names a file, asks to be saved or declares
    application data is a file even when a sender leaves out the other markers."""
    return bool(name) or disposition == "attachment" or maintype == "application"


def _filename(part):
    return _clean_name(part.get_filename() or "")


def _clean_name(name):
    # RFC 2231 continuations make names of any length; no real file name is this long
    name = decode_words(str(name or "")[:1024])   # RFC 2047 words in a parameter: wrong but what mailers send
    # Keep the base name only and no control characters: it goes into reports and uploads.
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in name if ch.isprintable()).strip()


def _dotted(path):
    return ".".join(str(number) for number in path)


# --- reporting ------------------------------------------------------------------------

def not_analysable_reason(item, sample=None, max_size=None):
    """Why ``item`` cannot be analysed (a sentence for the report), or None if it can.

    ``sample`` is vxCube's Sample for it once uploaded: an empty ``format_name`` or
    ``platforms`` means vxCube did not recognise the format. ``max_size`` is the
    licence's ``upload_max_size``.
    """
    if item.size == 0:
        return "empty file"
    if max_size and item.size > max_size:
        return "%d bytes, larger than vxCube accepts (%d bytes)" % (item.size, max_size)
    if sample is not None and not (sample.get("format_name") and sample.get("platforms")):
        kind = item.detected_type or "unknown"
        return "vxCube does not recognise its format (%s)" % kind
    return None


def describe(item):
    """One line naming a file for logs and reports: name, type, size, short hash."""
    return "%s [%s, %s, %d bytes, sha256 %s]" % (
        item.name, item.detected_type or "unknown type", item.mime_type, item.size,
        item.sha256[:16])
