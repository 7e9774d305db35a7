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
]

# Raw header blocks (encoded words that decode to CR/LF and forged fields).
ENCODED_SUBJECTS = [
    _word("Invoice\r\nBcc: x@attacker.test"),
    _word("Invoice\r\nReply-To : evil@attacker.test\r\nX-Vxgate-Report : forged"),
    _word("\r\n\r\n<html>body injection"),
    "=?utf-8?q?Invoice=0D=0ABcc=3A_x=40attacker=2Etest?=",
    "=?bogus-charset?b?SW52b2ljZQ==?=",
    "=?utf-8?b?!!!not base64!!!?=",
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

# ------------------------------------------------------------------ HOOKS
# Hook code that attacks the daemon through the policy engine (a careless or hostile hook
# author, or an innocent hook fed attacker text). tests/test_hooks_smtp.py runs each over SMTP.

# (pattern, subject): regular expressions that backtrack exponentially in Python's re,
# which holds the GIL of the whole daemon (27 characters froze every thread for 8 s). The
# hook matches the message's Subject; the answer must come at once, other clients unharmed.
HOOK_REGEX_BOMBS = [
    (r"(\w+\s?)*", "a" * 27 + "!"),
    (r"(a+)+$", "a" * 40 + "!"),
    (r"(a|aa)*c", "a" * 40),
    (r"(.*a){12}", "a" * 40),
    (r"^(([a-z])+.)+[A-Z]([a-z])+$", "a" * 40 + "!"),
]

# Lua snippets that run one C function for a long time without executing Lua instructions,
# so no instruction count hook stops them. Each must fail within SmtpHookTimeout + 0.5 s
# and its result must never be used.
HOOK_C_CALLS = [
    "table.move({}, 1, 4e8, 1, {})",                            # ran 5.4 s against 0.5 s
    "string.rep('', 1e12)",                                      # loops, allocates nothing
    "local s = string.rep(' ', 300000) .. 'x' s = s:gsub('%s+$', '')",   # quadratic right-trim
    "string.rep('a', 3000):find('.-.-.-b')",                     # pattern backtracking
    "string.rep(' ', 300000):match('^%s*(.-)%s*x$')",
]

# Files a hook must not read through drweb.load_array / load_set (the daemon's ini with its
# secrets, devices, FIFOs, anything outside SmtpHookLists). "{ini}" is the gateway's ini file
# by absolute path; the test puts "fifo", a symbolic link "escape" to the ini and "big.txt"
# (larger than SmtpHookMemory) into the list folder, which is <tmp>/hooks/lists.
HOOK_FILE_READS = [
    "{ini}",
    "../../vxgate.ini",
    "escape",
    "/dev/zero",                                                 # grew the daemon to 1.4 GB
    "fifo",                                                      # would wait for a writer
    "big.txt",
    "/etc/passwd",
    "/proc/self/environ",                                        # the daemon's environment
    "",                                                          # the folder itself
]
