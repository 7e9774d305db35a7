"""A MIME tree over the raw bytes, with byte offsets, for the hook and for modifications.

The standard ``email`` package parses into objects that re-encode when serialised, which
breaks DKIM and costs copies of a large message. Here every part is only three offsets into
the one ``bytes`` object (where the part starts, where its body starts, where it ends), so
untouched bytes can be spliced through unchanged; headers, children and decoded bodies are
computed on first use. Parts are numbered like IMAP sections (RFC 3501), the numbering
``salmon_app.vxcube.extract`` gives files: children of a multipart are "1", "2", ...; the
body of a single-part message is "1"; an attached message at "2" contributes "2.1",
"2.2", ... (its children, or its own body when it is single-part).
"""
import base64
import binascii
import email.parser
import email.policy
import hashlib
import quopri
import re

from salmon_app.headers import decode_words
from salmon_app.vxcube.extract import is_file_part

# Deeper nesting is an attack on the parser, not mail (the extractor uses the same bound).
MAX_DEPTH = 32

_FIELD_START = re.compile(rb"[!-9;-~]+:")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def decode_header_value(raw):
    """Unfolded, RFC 2047-decoded text of a header field value given as bytes."""
    text = re.sub(rb"\r?\n(?=[ \t])", b"", raw).strip().decode("utf-8", "replace")
    return decode_words(text)


def line_ending(raw):
    """The line ending the message uses, so that inserted lines match their neighbours."""
    end = raw.find(b"\n")
    return b"\r\n" if end > 0 and raw[end - 1:end] == b"\r" else b"\n"


class Field:
    """One header field: name, raw value bytes and its span (folded lines and line end)."""
    __slots__ = ("name", "raw_value", "start", "end")

    def __init__(self, name, raw_value, start, end):
        self.name, self.raw_value, self.start, self.end = name, raw_value, start, end

    @property
    def value(self):
        return decode_header_value(self.raw_value)


class Part:
    """One MIME part: ``raw[start:body_start]`` is its header block, ``raw[body_start:end]``
    its body. ``path`` is the IMAP section number ("" only for a multipart message)."""

    def __init__(self, raw, start, end, path, depth=0):
        self.raw, self.start, self.end, self.path, self.depth = raw, start, end, path, depth
        if raw.startswith((b"\r\n", b"\n"), start, end):   # no header fields at all
            self.header_end, self.body_start = start, start + (2 if raw[start] == 13 else 1)
        else:
            blank = _BLANK_LINE.search(raw, start, end)
            # The header block keeps its last field's line break, not the empty line.
            self.header_end = blank.start() + (2 if raw[blank.start()] == 13 else 1) \
                if blank else end
            self.body_start = blank.end() if blank else end
        self._fields = self._info = self._children = self._decoded = None

    # --- headers ---------------------------------------------------------------------

    @property
    def fields(self):
        if self._fields is None:
            self._fields = _split_fields(self.raw, self.start, self.header_end)
        return self._fields

    def header(self, name):
        """Decoded value of the first field called ``name`` (any case), or None."""
        name = name.lower()
        return next((f.value for f in self.fields if f.name.lower() == name), None)

    @property
    def info(self):
        """The content headers parsed by the standard library (parameters, RFC 2231)."""
        if self._info is None:
            self._info = _HEADER_PARSER.parsebytes(self.raw[self.start:self.header_end])
        return self._info

    @property
    def content_type(self):
        return self.info.get_content_type()

    @property
    def name(self):
        """The file name the part carries (base name, printable characters), or None."""
        try:
            name = self.info.get_filename()
        except (LookupError, UnicodeError, ValueError):
            name = None
        if not name:
            return None
        if "=?" in name:   # RFC 2047 words in a parameter: wrong, but what mailers send
            name = decode_header_value(name.encode("utf-8", "replace"))
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
        return "".join(ch for ch in name if ch.isprintable()).strip() or None

    @property
    def disposition(self):
        return self.info.get_content_disposition()

    # --- structure -------------------------------------------------------------------

    @property
    def children(self):
        if self._children is None:
            self._children = [] if self.depth >= MAX_DEPTH else list(self._parse_children())
        return self._children

    @property
    def is_leaf(self):
        return not self.children and not self._is_container()

    def _is_container(self):
        ctype = self.content_type
        return (ctype.startswith("multipart/") and bool(self.info.get_param("boundary"))) or \
            (ctype == "message/rfc822" and self.depth > 0 and not self._encoded())

    def _encoded(self):
        return (self.info.get("Content-Transfer-Encoding") or "").strip().lower() \
            in ("base64", "quoted-printable")

    def _parse_children(self):
        if not self._is_container():
            return
        if self.content_type == "message/rfc822":
            inner = Part(self.raw, self.body_start, self.end, self.path + ".1", self.depth + 1)
            if inner._is_container() and inner.content_type.startswith("multipart/"):
                inner.path = self.path   # RFC 3501: its children are numbered under ours
                yield from inner.children
            else:
                yield inner
            return
        for number, (start, end) in enumerate(self._sections(), 1):
            path = "%s.%d" % (self.path, number) if self.path else str(number)
            yield Part(self.raw, start, end, path, self.depth + 1)

    def _sections(self):
        # bytes.find, not a multi-line regex: the body may be tens of megabytes.
        raw, end = self.raw, self.end
        marker = b"--" + self.info.get_param("boundary").encode("utf-8", "replace")
        pos, start = self.body_start, None
        while True:
            at = raw.find(marker, pos, end)
            if at < 0:
                break
            pos = at + 1
            line_end = raw.find(b"\n", at, end)
            line_end = end if line_end < 0 else line_end
            rest = raw[at + len(marker):line_end]
            closing = rest.startswith(b"--")
            # A delimiter starts a line and has only padding after it; anything else is
            # text that happens to contain the boundary.
            if (at > self.body_start and raw[at - 1] != 10) or \
                    rest[2 if closing else 0:].strip(b" \t\r"):
                continue
            if start is not None:
                # The line break before a delimiter belongs to the delimiter (RFC 2046).
                stop = at - 1 - (raw[at - 2:at - 1] == b"\r") if at > self.body_start else at
                yield start, max(start, stop)
            if closing:
                return
            start = pos = min(line_end + 1, end)
        if start is not None and start < end:   # unterminated: the rest is the last part
            yield start, end

    def walk(self):
        """This part and every part below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def part_at(self, path):
        """The part with section number ``path`` below (or equal to) this one, or None."""
        if path in ("", self.path):
            return self
        prefix = self.path + "." if self.path else ""
        if not path.startswith(prefix):
            return None
        node = self
        for number in path[len(prefix):].split("."):
            if not number.isdigit() or not 0 < int(number) <= len(node.children):
                return None
            node = node.children[int(number) - 1]
        return node

    # --- kinds, as the hook's iterators name them --------------------------------------

    @property
    def is_file(self):
        # the extractor's rule, so every analysed file is found by files{}
        return self.is_leaf and is_file_part(self.name, self.disposition, self.info.get_content_maintype())

    @property
    def is_attachment(self):
        return self.is_leaf and (self.disposition == "attachment"
                                 or (bool(self.name) and self.disposition != "inline"))

    @property
    def is_text(self):
        return self.is_leaf and self.info.get_content_maintype() == "text" \
            and not self.is_attachment

    # --- body ------------------------------------------------------------------------

    @property
    def body_raw(self):
        return self.raw[self.body_start:self.end]

    @property
    def decoded(self):
        """The body with its Content-Transfer-Encoding undone (raw for containers)."""
        if self._decoded is None:
            self._decoded = _decode_transfer(self.body_raw, self.info) if self.is_leaf \
                else self.body_raw
        return self._decoded

    @property
    def text(self):
        """The body as text for text/* leaves (charset honoured), else None."""
        if not (self.is_leaf and self.info.get_content_maintype() == "text"):
            return None
        charset = self.info.get_content_charset() or "utf-8"
        try:
            return self.decoded.decode(charset, "replace")
        except LookupError:
            return self.decoded.decode("utf-8", "replace")

    def digest(self, algorithm):
        return hashlib.new(algorithm, self.decoded).hexdigest()


def _split_fields(raw, start, end):
    fields, pos = [], start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if raw[pos:pos + 1] in (b" ", b"\t") and fields:   # a folded continuation line
            fields[-1].end = line_end
        else:
            match = _FIELD_START.match(raw, pos, line_end)
            # A line that is no field (an mbox "From " line, junk) is kept as a nameless
            # field, so that edits splice around it instead of losing it.
            name = match.group()[:-1].decode("ascii") if match else ""
            fields.append(Field(name, match.end() if match else line_end, pos, line_end))
        pos = line_end
    for field in fields:   # the value is known once the continuation lines are
        field.raw_value = raw[field.raw_value:field.end]
    return fields


def _decode_transfer(body, info):
    encoding = (info.get("Content-Transfer-Encoding") or "").strip().lower()
    if encoding == "base64":
        try:
            return base64.b64decode(body)
        except (binascii.Error, ValueError):
            # Broken padding or junk: keep what decodes, as mail clients do.
            data = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
            return binascii.a2b_base64(data[:len(data) - len(data) % 4] or b"")
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    return body


def parse(raw):
    """The root part of the message ``raw`` (nothing is parsed until it is asked for)."""
    root = Part(raw, 0, len(raw), "")
    if not root._is_container():
        root.path = "1"
    return root
