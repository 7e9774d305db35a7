"""Formatting for people: safe text, aligned columns, sizes, times and durations.

Subjects, addresses and headers come from strangers: ``clean()`` replaces control and
formatting characters (terminal escapes, bidi overrides, newlines) so printing them cannot
move the cursor or hide text. ``table()`` aligns columns by display width (wide East Asian
characters count two) and ``fit()`` truncates to a width with ``...``.
"""
import datetime
import json
import unicodedata


def clean(text, keep_tabs=False):
    """``text`` with every non-printable character shown as ``?`` (tabs as spaces if kept)."""
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif char == "\t" and keep_tabs:
            out.append(" ")
        else:
            out.append("?")
    return "".join(out)


def width(text):
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1
               for c in text)


def fit(text, limit):
    """``text`` cut to ``limit`` display columns, ending in ``...`` when cut."""
    if limit is None or width(text) <= limit:
        return text
    if limit <= 3:
        return "." * max(limit, 0)
    out, used = [], 0
    for char in text:
        w = width(char)
        if used + w > limit - 3:
            break
        out.append(char)
        used += w
    return "".join(out) + "..."


def pad(text, size, right=False):
    gap = " " * max(0, size - width(text))
    return gap + text if right else text + gap


def table(header, rows, right=(), last_free=True):
    """Lines of an aligned table; columns in ``right`` are right-aligned; the last is not padded."""
    widths = [max([width(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = []
    for cells in [header] + rows:
        parts = []
        for i, cell in enumerate(cells):
            if i == len(cells) - 1 and last_free and i not in right:
                parts.append(cell)
            else:
                parts.append(pad(cell, widths[i], i in right))
        lines.append("  ".join(parts).rstrip())
    return lines


def size(n):
    """1234 -> 1.2K (powers of 1024, like ls -h)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1023.5 or unit == "T":
            break
        value /= 1024
    if unit == "":
        return "%d" % value
    return "%.1f%s" % (value, unit) if value < 9.95 else "%d%s" % (round(value), unit)


def amount(n):
    """A size for a sentence: "512 bytes", "1.2K"."""
    return "%d bytes" % n if (n or 0) < 1024 else size(n)


def when(ts, seconds=True):
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def precise(ts):
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def iso(ts):
    """Local time with its offset, for scripts."""
    if not ts:
        return None
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def duration(seconds):
    seconds = max(0, int(seconds))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return "%d%s" % (seconds // span, unit)
    return "%ds" % seconds


def sender(address):
    return "<>" if not address else address


def dumps(data):
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False)
