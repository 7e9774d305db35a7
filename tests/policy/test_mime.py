"""The byte-offset MIME tree behind ctx.message and the repacker, on awkward input."""
import time

import pytest
from support.policy_data import EXE, multipart

from salmon_app.policy import parse_mime


def test_boundary_text_inside_a_part_is_not_a_delimiter():
    raw = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nsee --b2 and\n--bx\n"
           b"--b  \n\nsecond\n--b--\nepilogue\n")
    parts = parse_mime(raw).children
    assert [raw[p.start:p.end] for p in parts] == [b"\nsee --b2 and\n--bx", b"\nsecond"]
    assert [p.body_raw for p in parts] == [b"see --b2 and\n--bx", b"second"]
    assert parts[0].content_type == "text/plain" and parts[0].fields == []


def test_unterminated_multipart_and_missing_boundary():
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nX-A: 1\r\n\r\nlast"
    (part,) = parse_mime(raw).children
    assert part.header("x-a") == "1" and part.body_raw == b"last"
    flat = parse_mime(b"Content-Type: multipart/mixed\n\nno boundary\n")
    assert flat.path == "1" and flat.is_leaf and flat.decoded == b"no boundary\n"


def test_header_decoding_and_names():
    raw = (b"Subject: =?iso-8859-1?q?caf=E9?=\n =?utf-8?b?4oKs?=\n"
           b"Content-Type: application/octet-stream;\n name*=utf-8''%D1%84.exe\n\nx")
    part = parse_mime(raw)
    assert part.header("SUBJECT") == "café€" and part.name == "ф.exe"
    assert parse_mime(b'Content-Type: text/plain; name="..\\\\evil\\\\a.txt"\n\nx').name == "a.txt"


def test_broken_base64_keeps_what_decodes():
    part = parse_mime(b"Content-Transfer-Encoding: base64\n\naGVsbG8=\n!!d29y")
    assert part.decoded.startswith(b"hello")


def test_deep_nesting_is_bounded():
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                   for i in range(100)) + b"\nleaf\n"
    depth, part = 0, parse_mime(raw)
    while part.children:
        part, depth = part.children[0], depth + 1
    assert depth == 32


def test_paths_agree_with_the_attachment_extractor():
    extract = pytest.importorskip("salmon_app.vxcube.extract")
    inner = multipart([("inner.exe", EXE)], eol=b"\n")
    raw = (b"From: a@example.org\nContent-Type: multipart/mixed; boundary=outer\n\n--outer\n"
           b"Content-Type: text/plain\n\nhi\n--outer\nContent-Type: message/rfc822\n\n"
           + inner + b"--outer\nContent-Type: application/pdf; name=x.pdf\n\n%PDF\n--outer--\n")
    root = parse_mime(raw)
    files = extract.extract_files(raw)
    assert files and {(f.path, f.name) for f in files} == \
        {(p.path, p.name) for p in root.walk() if p.is_file}
    for item in files:
        assert root.part_at(item.path).decoded == item.content


@pytest.mark.parametrize("value", [b"=?a?q?a " * 32000, b"=?utf-8?q?" + b"x" * 200000,
                                   b"=?" * 100000, b"=?x?b?" * 40000])
def test_header_decoding_is_linear(value):
    # The standard library's encoded-word pattern took 80 s on the first (quadratic).
    started = time.monotonic()
    assert parse_mime(b"Subject: " + value + b"\r\n\r\nx").header("Subject")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("raw, text", [
    (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
    (b"x =?utf-8?q?a?= y", "x a y"),
    (b"=?utf-8?b?4oKs?=(=?bogus?q?z?=)", "\u20ac(=?bogus?q?z?=)"),
    (b"=?utf-8?b?!!!not base64!!!?=", "=?utf-8?b?!!!not base64!!!?="),
    (b"=?ISO-8859-1?Q?caf=E9_au_lait?=", "caf\u00e9 au lait"),
])
def test_encoded_words(raw, text):
    assert parse_mime(b"Subject: " + raw + b"\r\n\r\nx").header("Subject") == text
