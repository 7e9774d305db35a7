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
    b"MAIL FROM:<" + b'"a"' * 19,                             # issue 10.6: 8 s, x2.5 per "a"
    b"RCPT TO:<" + b'"a"' * 19,
    b"MAIL FROM:<" + b'"a"' * 1300 + b">",                    # a 4 KB line of quoted strings
    b"MAIL FROM:<" + b'">"' * 1300 + b">",                    # every '>' quoted but the last
    b'MAIL FROM:<"' + b'\\"' * 2000 + b">",                  # quoted pairs, never closed
    b"MAIL FROM:" + b" " * 4000 + b"<a@x.test>",              # white space before the path
    b"MAIL FROM:<@" + b"r.test,@" * 450 + b"r.test:a@x.test>",  # a long source route
    b"MAIL FROM:<a@x.test>" + b" SIZE=1" * 500,               # parameters are capped
    b"RCPT TO:<b@x.test>" + b" NOTIFY=NEVER" * 300,
    b"MAIL FROM:<a@x.test> ENVID=" + b"\xff" * 100,           # non-ASCII parameter value
    b"MAIL FROM:<a\x00b@x.test>",                             # NUL in an address
]

XFORWARD_BAD = [
    b"XFORWARD PORT=abc",
    b"XFORWARD ADDR=\xc3\xa9\xff",
    b"XFORWARD NAME=" + b"\xff" * 10,
    b"XFORWARD PORT=99999999999999999999999",
    b"XFORWARD HELO=" + b"a" * 2000,
    b"XFORWARD PORT=65536",
    b"XFORWARD PORT=-1",
    b"XFORWARD ADDR=not-an-address",
    b"XFORWARD NAME=bad+zzxtext",                             # '+' must start a hex pair
    b"XFORWARD NAME=a\x01b",
    b"XFORWARD NAME=",
    b"XFORWARD BOGUS=1",
    b"XFORWARD PROTO=" + b"E" * 65,
    b"XFORWARD " + b"NAME=a.test " * 8,                      # more attributes than exist
    b"XFORWARD NAME=ok.test PORT=abc",                        # all or nothing: NAME not kept
]

# Header blocks (bytes, each line within 998 characters) sent in DATA: the receiver keeps
# the first 64 KB and the record reads Subject/From/Message-ID from them. Each must cost
# milliseconds and give one clean line per field.
SLOW_HEADER_BLOCKS = [
    b"Subject: folded" + b"\r\n a" * 250000 + b"\r\n",          # 1 MB of continuation lines
    b"X-Pad: x\r\n" * 100000 + b"Subject: late\r\n",            # 1 MB of fields
    b"Subject: " + b"=?utf-8?q?a?=\r\n " * 4000 + b"end\r\n",    # thousands of encoded words
    b"Subject: " + (b"=?a?q?x " * 120 + b"\r\n ") * 60 + b"x\r\n",  # encoded words that never end
    b"Subject: a\x00b\x00\r\nFrom: \x00<x@x.test>\r\nMessage-ID: <\x00@x.test>\r\n",
    b"Subject: Gr\xfc\xdfe \xff\xfe =?utf-8?q?mixed?=\r\n",         # raw 8-bit, not UTF-8
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
