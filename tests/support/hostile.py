"""Hostile inputs, in one place: every parser and every writer of vxgate is tried with all of them.

Attacker input is everything in a message and its envelope (and a hook author's mistakes).
Each section below names the code that must survive it; tests import the lists and loop
over them, so a new nasty input added here is tried everywhere at once. Keep entries small
and deterministic (built here, never fetched), and say in a comment what each one attacks.
"""
import base64

from support.mail import EICAR, pe_image

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

# ------------------------------------------------------------------ DATA (receiver)
# What follows a DATA command up to and past its end (salmon_app/receiver.py, Session._receive
# and its buffer-at-a-time _clean_lines): the end is CRLF.CRLF only (no SMTP smuggling), a
# line's leading dot goes, bare LF and overlong lines (over 998 + CRLF) are refused.
DATA_STREAMS = [
    b"Subject: s\r\n\r\nbody\r\n.\r\n",
    b"\r\nno headers\r\n.\r\nQUIT\r\n",                       # the next command pipelined
    b"Subject: s\r\n\r\n.\r\n",                                 # an empty body
    b".\r\n",                                                   # an empty message
    b"Subject: s\r\n\r\nsmuggled\n.\nMAIL FROM:<x@evil.test>\r\n.\r\n",     # LF.LF is no end
    b"Subject: s\r\n\r\nsmuggled\r\n.\nRCPT TO:<x@evil.test>\r\n.\r\n",   # CRLF.LF neither
    b"Subject: s\r\n\r\nsmuggled\n.\r\nDATA\r\n.\r\n",                   # LF.CRLF neither
    b"Subject: s\r\n\r\nbare\rCR\r\n\r.\r\n.\r\n",                      # bare CRs stay data
    b"Subject: s\r\n\r\n..dot\r\n.\r\n...\r\n..\r\n.x\r\n.\r\n",          # leading dots
    b"Subject: s\r\n\r\n" + b"x" * 998 + b"\r\n.\r\n",                    # the longest line
    b"Subject: s\r\n\r\n" + b"x" * 999 + b"\r\n.\r\n",                    # one byte too long
    b"Subject: s\r\n\r\n" + b"." + b"x" * 998 + b"\r\n.\r\n",             # long only if stuffed
    b"Subject: s\r\n\r\n" + b"y" * 5000 + b"\n.\r\n.\r\n",               # long and bare LF
    b"Subject: s\r\n\r\n" + b"line\r\n" * 3000 + b".\r\n",                # 18 KB of lines
    b"Subject: s\r\n\r\nbody\r\n",                                 # no end: the client left
    b"Subject: s\r\n\r\nbody\r\n.",                                # an end cut short
]

# Header blocks read a buffer at a time (Session._receive keeps the first 64 KB of the
# header for the record, line by line as the slow path does): over the limit, with leading
# dots, with no body, and lines that cross every buffer boundary.
DATA_HEADERS = [
    (b"X-Pad: " + b"x" * 900 + b"\r\n") * 80 + b"Subject: late\r\n\r\nbody\r\n.\r\n",   # 72 KB of header
    b"Subject: s\r\n" + b"X: " + b"y" * 65526 + b"\r\n" * 3 + b".\r\n",                  # an overlong line
    b"..Subject: dotted\r\n.X: y\r\nFrom: a@x.test\r\n\r\n..body\r\n.\r\n",
    b"Subject: s\r\nFrom: a@x.test\r\n.\r\n",                                            # no end of header
    (b"H: " + b"z" * 60 + b"\r\n") * 1200 + b"\r\n" + b"body\r\n" * 100 + b".\r\n",
]

# Short lines, then one that breaks a rule: the buffer-at-a-time path must fall back for the
# rest of that buffer, not look at the whole buffer again for every short line (seconds of CPU).
DATA_ONE_BAD_LINE_LATE = [
    b"Subject: s\r\n\r\n" + b"\r\n" * 32000 + b"bare\n.\r\n.\r\n",
    b"Subject: s\r\n\r\n" + b"\r\n" * 32000 + b"z" * 1200 + b"\r\n.\r\n",
    b"Subject: s\r\n\r\n" + b"x\r\n" * 21000 + b".\r\n",        # over a 50,000-byte limit
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


def _mime(head, body):
    return head.replace(b"\n", b"\r\n") + b"\r\n\r\n" + body


_TOP = b"From: mallory@attacker.test\nTo: bob@x.test\nSubject: hidden file\nMIME-Version: 1.0\n"
_EXE = pe_image(EICAR)      # an executable that vxCube (and the emulator) finds dangerous


def _multipart(parts, boundary=b"b0", head=_TOP):
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"
    return _mime(head + b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"", body)


def _exe_part(name=b"invoice.exe", data=_EXE):
    return _mime(b"Content-Type: application/octet-stream; name=\"" + name + b"\"\n"
                 b"Content-Disposition: attachment; filename=\"" + name + b"\"\n"
                 b"Content-Transfer-Encoding: base64", base64.encodebytes(data).replace(b"\n", b"\r\n"))


def _nested(depth):
    part = _exe_part()
    for level in range(depth):
        boundary = b"n%d" % level
        part = _mime(b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"",
                     b"--" + boundary + b"\r\n" + part + b"\r\n--" + boundary + b"--")
    return _TOP.replace(b"\n", b"\r\n") + part


def _uuencoded(data, name=b"invoice.exe"):
    import binascii
    lines = [binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45)]
    return b"begin 644 " + name + b"\n" + b"".join(lines) + b"`\nend\n"


def _tnef(name, data):
    import struct

    def obj(level, attr, kind, value):
        return struct.pack("<BHHI", level, attr, kind, len(value)) + value + struct.pack("<H", sum(value) & 0xFFFF)
    return (struct.pack("<IH", 0x223E9F78, 1) + obj(1, 0x9006, 8, struct.pack("<I", 0x10000))
            + obj(2, 0x9002, 6, b"\0" * 14) + obj(2, 0x8010, 1, name + b"\0") + obj(2, 0x800F, 6, data))


def _zip_locked():
    import io
    import pyzipper
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(buffer, "w", encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(b"infected")
        archive.writestr("invoice.exe", _EXE)
    return buffer.getvalue()


def _zipcrypto_locked():
    # ZipCrypto, the classic "password 123" mail attachment; hand-built, since the
    # standard library only reads such archives: one stored member, encryption flag set.
    import struct
    import zlib
    data = b"\0" * 12 + _EXE          # the 12-byte encryption header, then "encrypted" data
    name = b"invoice.exe"
    crc = zlib.crc32(_EXE)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 1, 0, 0, 0, crc, len(data), len(_EXE), len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 1, 0, 0, 0, crc, len(data), len(_EXE),
                          len(name), 0, 0, 0, 0, 0, 0)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), len(local) + len(name) + len(data), 0)
    return local + name + data + central + name + end


def _7z_locked(encrypt_names=False):
    import io
    import py7zr
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, "w", password="infected", header_encryption=encrypt_names) as archive:
        archive.writestr(_EXE, "invoice.exe")
    return buffer.getvalue()


def _rar_locked():
    # A RAR 5 archive whose headers are encrypted (rar -hp): signature, then the archive
    # encryption header (type 4). Hand-built: no free tool writes RAR.
    import struct
    import zlib
    body = bytes([4, 0, 0, 0, 15]) + b"\x11" * 16        # type 4, flags, version 0, flags, KDF count, salt
    header = bytes([len(body)]) + body
    return b"Rar!\x1a\x07\x01\x00" + struct.pack("<I", zlib.crc32(header)) + header + b"\0" * 64


def _attached(mime_type, name, data, encoding=b"base64"):
    return _mime(b"Content-Type: " + mime_type + b"; name=\"" + name + b"\"\n"
                 b"Content-Disposition: attachment; filename=\"" + name + b"\"\n"
                 b"Content-Transfer-Encoding: " + encoding, base64.encodebytes(data).replace(b"\n", b"\r\n"))


_TEXT = _mime(b"Content-Type: text/plain; charset=us-ascii", b"See the attachment.")
_INNER = _multipart([_TEXT, _exe_part()], b"inner", b"From: eve@x.test\nSubject: fwd\nMIME-Version: 1.0\n")

# (name, message bytes, expected): expected is "analysed" (the EICAR executable was found and
# judged dangerous) or the cause token the message must be unchecked with.
HIDDEN_FILES = [
    # a file below 33 levels of multipart: the extractor stops reading at 32
    ("nested-33-deep", _nested(33), "too-deep"),
    # an executable uuencoded inside a plain-text body: Outlook and others show it as a file
    ("uuencoded-in-text", _mime(_TOP + b"Content-Type: text/plain", b"Hello,\r\n\r\n"
                                + _uuencoded(_EXE).replace(b"\n", b"\r\n")), "analysed"),
    # the same inside a multipart's text part
    ("uuencoded-in-part", _multipart([_mime(b"Content-Type: text/plain", _uuencoded(_EXE).replace(b"\n", b"\r\n"))]),
     "analysed"),
    # text/plain first, multipart second: parsers that keep the first see no attachment
    ("two-content-types", _mime(_TOP + b"Content-Type: text/plain\nContent-Type: multipart/mixed; boundary=\"b0\"",
                                b"--b0\r\n" + _exe_part() + b"\r\n--b0--\r\n"), "unparseable"),
    # an attachment inside an attached message
    ("in-rfc822", _multipart([_TEXT, _mime(b"Content-Type: message/rfc822", _INNER)]), "analysed"),
    # the attached message itself base64-encoded (forbidden by RFC 2046, shown by mail programs)
    ("in-rfc822-base64", _multipart([_TEXT, _attached(b"message/rfc822", b"fwd.eml", _INNER)]), "analysed"),
    # Outlook's winmail.dat carrying the executable
    ("tnef", _multipart([_TEXT, _attached(b"application/ms-tnef", b"winmail.dat", _tnef(b"invoice.exe", _EXE))]),
     "analysed"),
    # a winmail.dat that is no TNEF, and one cut short in the middle of the executable
    ("tnef-not-tnef", _multipart([_TEXT, _attached(b"application/ms-tnef", b"winmail.dat", b"PK\x03\x04junk")]),
     "unparseable"),
    ("tnef-truncated", _multipart([_TEXT, _attached(b"application/ms-tnef", b"winmail.dat",
                                                    _tnef(b"invoice.exe", _EXE)[:-40])]), "unparseable"),
    # password-protected archives: nobody but the recipient can look inside
    ("zip-aes", _multipart([_TEXT, _attached(b"application/zip", b"invoice.zip", _zip_locked())]), "encrypted"),
    ("zip-zipcrypto", _multipart([_TEXT, _attached(b"application/zip", b"invoice.zip", _zipcrypto_locked())]),
     "encrypted"),
    ("7z", _multipart([_TEXT, _attached(b"application/x-7z-compressed", b"invoice.7z", _7z_locked())]), "encrypted"),
    ("7z-names", _multipart([_TEXT, _attached(b"application/x-7z-compressed", b"invoice.7z", _7z_locked(True))]),
     "encrypted"),
    ("rar-headers", _multipart([_TEXT, _attached(b"application/vnd.rar", b"invoice.rar", _rar_locked())]),
     "encrypted"),
    # one fragment of a message/partial split: nobody can judge a part of a file
    ("message-partial", _multipart([_TEXT, _mime(b"Content-Type: message/partial; id=\"x@y\"; number=1; total=2",
                                                 _exe_part())]), "unparseable"),
    # multipart without a boundary: what is an attachment is a matter of guessing
    ("multipart-no-boundary", _mime(_TOP + b"Content-Type: multipart/mixed",
                                    b"--b0\r\n" + _exe_part() + b"\r\n--b0--\r\n"), "unparseable"),
    # a single text part whose name= comes after a 600-character parameter: the quick "any
    # files here?" test read the Content-Type cut for display at 500 characters
    ("long-param-hides-name", _mime(_TOP + b'Content-Type: text/plain; x="' + b"a" * 600 + b'"; name="invoice.exe"\n'
                                    b"Content-Transfer-Encoding: base64", base64.encodebytes(_EXE).replace(b"\n", b"\r\n")),
     "analysed"),
    # a 54 KB file name in RFC 2231 continuations full of "=?": decoding it whole is quadratic
    ("rfc2231-long-name", _multipart([_TEXT, _mime(b"Content-Type: application/octet-stream\n"
                                                   b"Content-Disposition: attachment;\n" + b";\n".join(
                                                       b' filename*%d="=?a?q?x%04d.exe "' % (n, n) for n in range(2700))
                                                   + b"\nContent-Transfer-Encoding: base64",
                                                   base64.encodebytes(_EXE).replace(b"\n", b"\r\n"))]), "analysed"),
]

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

# ------------------------------------------------------------------ web console (salmon_app/web)
# Text that reaches the console's pages from mail: a subject, a file name and an address. Each
# must show as the text it is (escaped), never become an element or an event handler; a CR/LF
# must not break it into lines that pass for something else.
WEB_TEXT = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "Invoice\r\nBcc: x@attacker.test",
]
# Envelope senders with the same payloads (quoted local parts: RFC 5321 allows these characters).
WEB_SENDERS = [
    '"<script>alert(1)</script>"@evil.test',
    '"\\"><img src=x onerror=alert(1)>"@evil.test',
]
