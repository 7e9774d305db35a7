"""Reading a few header fields of a stored message for records and reports, for people.

Only the header block is parsed (never the body), RFC 2047 words are decoded, raw 8-bit
text is read as UTF-8 (RFC 6532), and what comes back is one clean line: unfolded, with
control characters (also ones that encoded words decode to) as spaces, at most 500
characters. Header blocks are attacker text, so nothing here raises (a malformed header
gives an empty or raw value) and the work is linear in the block: the standard library's
line-based parser, and decoding of only the start of each wanted value.
"""
import email.errors
import re
from email import policy
from email.header import decode_header
from email.parser import BytesHeaderParser

MAX_VALUE = 500
# Only the start of a value is decoded: enough for MAX_VALUE characters of the shortest
# encoded words, and no more work than that for a value of megabytes.
MAX_RAW = 16384
# Controls become spaces; C1 and U+2028/9 too, where str.splitlines() also breaks a line.
_CONTROLS = {c: " " for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


def fields(block, names):
    """{name.lower(): decoded value} for the ``names`` present in the header ``block`` (bytes)."""
    try:
        items = _plain_items(block)
        if items is None:
            items = BytesHeaderParser(policy=policy.compat32).parsebytes(block).raw_items()
        raw = {}
        for name, value in items:
            raw.setdefault(name.lower(), value)   # the first occurrence, as Message.get() has it
    except Exception:
        return {}
    return {name.lower(): readable(raw[name.lower()]) for name in names if name.lower() in raw}


def _plain_items(block):
    """[(name, raw value)] exactly as the standard library's compat32 parser reads a block of
    plain fields (``Name: value`` and folded lines, CRLF line ends, up to an empty line), or
    None for a block with anything else (a bare CR or LF, a line that is not a field, a
    leading "From "), which is left to the parser. The parser cost a twentieth of a small
    message's CPU; tests/test_writers.py holds the two to the same result on hostile blocks."""
    text = block.decode("ascii", "surrogateescape")
    if not text.endswith("\r\n"):
        return [] if not text else None
    items = []
    for line in text[:-2].split("\r\n"):
        if not line:
            break                               # the end of the header block
        if "\r" in line or "\n" in line:
            return None
        if line[0] in " \t":                    # folded: the value goes on, line end and all
            if not items:
                return None
            items[-1][1].append(line)
            continue
        colon = line.find(":")
        name = line[:colon]
        if colon <= 0 or not (name.isascii() and name.isprintable()) or " " in name or line.startswith("From "):
            return None
        items.append((name, [line[colon + 1:].lstrip(" \t")]))
    return [(name, "\r\n".join(value)) for name, value in items]


def readable(value):
    """A raw header value (8-bit bytes as surrogate escapes) as one line of text for people."""
    try:
        text = value[:MAX_RAW].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if text.isascii():   # raw UTF-8 (RFC 6532) is shown as it is, not mixed with encoded words
            text = decode_words(text)
        # unfolds too: a continuation line starts with white space
        text = " ".join(text.translate(_CONTROLS).split())[:MAX_VALUE]
        return text.encode("utf-8", "replace").decode("utf-8")   # no lone surrogates for SQLite
    except Exception:
        return ""


# An RFC 2047 encoded word. No part of it runs past a "?" or a blank, so finding them all is
# linear; the standard library's own pattern (``.*?\?=``) rescans the rest of the line from
# every "=?", and a 256 KB Subject of "=?a?q?a " took 80 s while holding the GIL.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?[qQbB]\?[^?\s]*\?=")


def decode_words(text):
    """``text`` with its RFC 2047 encoded words decoded, in linear time; a word that does not
    decode (an unknown charset, bad base64) is left as it is."""
    if "=?" not in text:
        return text
    pieces, end = [], None
    for word in _ENCODED_WORD.finditer(text):
        gap = text[end or 0:word.start()]
        if end is None or gap.strip():   # blanks between two encoded words are dropped
            pieces.append(gap)
        pieces.append(_decoded_word(word.group(0)))
        end = word.end()
    pieces.append(text[end or 0:])
    return "".join(pieces)


def _decoded_word(word):
    try:
        ((data, charset),) = decode_header(word)
        return data.decode(charset or "ascii", "replace") if isinstance(data, bytes) else data
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return word
