"""Hostile inputs, in one place: every parser and every writer of vxgate is tried with all of them.

Attacker input is everything in a message and its envelope (and a hook author's mistakes).
Each section below names the code that must survive it; tests import the lists and loop
over them, so a new nasty input added here is tried everywhere at once. Keep entries small
and deterministic (built here, never fetched), and say in a comment what each one attacks.
"""
import base64

from support.mail import EICAR

# ------------------------------------------------------------------ envelope (receiver)
# SMTP command lines (bytes, without CRLF). Each must be answered within a second with a
# 2xx/5xx reply and must never stall other sessions (no backtracking on attacker text).
REDOS_COMMANDS = [
    b"MAIL FROM:<" + b"a" * 40,                              # no closing '>'
    b"MAIL FROM:<" + b'"' * 40,                               # quotes that never close
    b"MAIL FROM:<" + b'"a' * 40,
    b"RCPT TO:<" + b"a" * 40,
    b"RCPT TO:<" + b'"a"' * 40 + b'"',
    b"MAIL FROM:<" + b"\\" * 40,
    b"MAIL FROM:<" + b"a" * 900 + b"> " + b"X=" * 40,
]

XFORWARD_BAD = [
    b"XFORWARD PORT=abc",
    b"XFORWARD ADDR=\xc3\xa9\xff",
    b"XFORWARD NAME=" + b"\xff" * 10,
    b"XFORWARD PORT=99999999999999999999999",
    b"XFORWARD HELO=" + b"a" * 2000,
]

# ------------------------------------------------------------------ header values
# Text that ends up in headers vxgate writes (reports, notices, bounces, repack notes, hook
# edits): every writer must keep each on one header line, never add or forge a field.
def _word(text):
    return "=?utf-8?b?%s?=" % base64.b64encode(text.encode()).decode()


HEADER_VALUES = [
    "Invoice\r\nBcc: victim@example.test",
    "Invoice\r\nReply-To : evil@attacker.test",
    "Invoice\nX-Vxgate-Report : forged",
    "Invoice\rX-Vxgate-Verdict: clean",
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "\x00\x01\x1b[31mred",
    "a" * 5000,
    "\u202eexe.pdf",                                          # right-to-left override
    "\u2028line separator\u2029",
    "Invoice\r\n\tBcc: folded@attacker.test",              # a break that passes for folding
    "Invoice\x85Bcc: nel@attacker.test\x0bX-A: vt\x0cX-B: ff",  # the other line breaks of str.splitlines
    "=?utf-8?q?Invoice=0D=0ABcc=3A_x=40attacker=2Etest?=",   # text the email package would decode again
]

# Raw header blocks (encoded words that decode to CR/LF and forged fields).
ENCODED_SUBJECTS = [
    _word("Invoice\r\nBcc: x@attacker.test"),
    _word("Invoice\r\nReply-To : evil@attacker.test\r\nX-Vxgate-Report : forged"),
    _word("\r\n\r\n<html>body injection"),
    "=?utf-8?q?Invoice=0D=0ABcc=3A_x=40attacker=2Etest?=",
    "=?bogus-charset?b?SW52b2ljZQ==?=",
    "=?utf-8?b?!!!not base64!!!?=",
    _word("=?utf-8?q?a=0D=0ABcc=3A_x=40attacker=2Etest?="),    # decodes to a word that decodes to CR/LF
    "=?bogus?b?eA==?= =?utf-8?q?a=0D=0ABcc=3A_x=40attacker=2Etest?=",   # one bad word: all kept raw
]

# ------------------------------------------------------------------ message structure
# Messages that try to hide a file from analysis. Each must end with the file analysed, or
# the message ``unchecked`` with a cause: never ``none``. Filled in by the analysis tests.
EICAR_B64 = base64.b64encode(EICAR)

# ------------------------------------------------------------------ vxCube responses
# Bodies of a wrong shape that a (broken or hostile) vxCube may answer with.
VXCUBE_BAD_JSON = [
    b'{"tasks": "garbage"}',
    b'{"tasks": [1, 2, 3]}',
    b'{"tasks": [{"status": null}]}',
    b"[]",
    b"null",
    b'"string"',
    b"{not json",
    b'{"id": {"nested": true}}',
]
