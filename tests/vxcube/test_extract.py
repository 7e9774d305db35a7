"""Attachment extraction: types by content, selection, MIME paths, and messages that are
broken on purpose."""
import io
import zipfile
from email.message import EmailMessage

import pytest

from salmon_app.vxcube import containers
from salmon_app.vxcube import extract as extract_module
from salmon_app.vxcube.extract import (FileItem, describe, detect_type, extract, extract_files,
                                       is_email, not_analysable_reason)
from support.mail import zip_bytes

PDF = b"%PDF-1.4\n1 0 obj << >> endobj\n"
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200)




def by_name(files):
    return {item.name: item for item in files}


# --- types by content ------------------------------------------------------------------

def test_renamed_exe_is_still_exe(make_mail, make_pe):
    raw = make_mail([("invoice.pdf", make_pe(), "application/pdf")])
    [item] = extract_files(raw, {"exe"})
    assert (item.name, item.detected_type, item.mime_type) == \
        ("invoice.pdf", "exe", "application/pdf")
    assert item.selected
    assert item.size == len(make_pe()) and len(item.sha256) == 64


@pytest.mark.parametrize("content, name, expected", [
    ("pe", "a.bin", "exe"),
    ("dll", "a.exe", "dll"),
    (PDF, "a.exe", "pdf"),
    (zip_bytes({"a.txt": "x"}), "a.docx", "zip"),
    (zip_bytes({"[Content_Types].xml": "<T/>", "word/document.xml": "<w/>"}), "x", "docx"),
    (zip_bytes({"[Content_Types].xml": "<T/>", "xl/workbook.xml": "<w/>"}), "x", "xlsx"),
    (zip_bytes({"[Content_Types].xml": "application/vnd.ms-word.document.macroEnabled",
                "word/document.xml": "<w/>"}), "x.docx", "docm"),
    (zip_bytes({"META-INF/MANIFEST.MF": "Manifest-Version: 1.0"}), "x.zip", "jar"),
    (OLE + "WordDocument".encode("utf-16-le"), "x.xls", "doc"),
    (OLE + "Workbook".encode("utf-16-le"), "x", "xls"),
    (OLE, "setup.msi", "msi"),    # the container alone says nothing: a fitting name may
    (OLE, "invoice.pdf", "ole"),  # ... and a name that does not fit may not
    (b"{\\rtf1\\ansi hello}", "a.doc", "rtf"),
    (b"<html><body>hi</body></html>", "a.txt", "html"),
    (b"WScript.Echo('hi');", "run.JS", "js"),   # text: only the name can tell
    (b"plain words", "notes", ""),
    (b"", "empty.exe", "exe"),
])
def test_detect_type(make_pe, content, name, expected):
    content = {"pe": make_pe(), "dll": make_pe(dll=True)}.get(content, content)
    assert detect_type(content, name) == expected


def test_is_email():
    assert is_email(b"MIME-Version: 1.0\r\nFrom: a@b\r\nTo: c@d\r\nSubject: s\r\n\r\nbody")
    assert is_email(b"Received: from x\r\nFrom: a@b\r\n\r\nhi")
    assert is_email(b"anything", "saved.EML")
    assert not is_email(PDF, "a.pdf")
    assert not is_email(b"Key: value\nOther: thing\n\nbody")


# --- selection -------------------------------------------------------------------------

def test_selection_by_type_and_by_claimed_name(make_mail, make_pe):
    raw = make_mail([("invoice.pdf", make_pe(), "application/pdf"),
                     ("real.pdf", PDF, "application/pdf"),
                     ("data.zip", zip_bytes({"a": "b"}), "application/zip")])
    assert all(item.selected for item in extract_files(raw, None))
    selected = {item.name for item in extract_files(raw, {"PDF"}) if item.selected}
    # the disguised exe claims to be a pdf: it is analysed as one of the configured types
    assert selected == {"invoice.pdf", "real.pdf"}
    assert {i.name for i in extract_files(raw, [".exe", "zip"]) if i.selected} == \
        {"invoice.pdf", "data.zip"}
    assert not any(item.selected for item in extract_files(raw, set()))


# --- structure -------------------------------------------------------------------------

def test_paths_inline_parts_and_attached_messages(make_pe):
    inner = EmailMessage()
    inner["From"], inner["Subject"] = "eve@example.org", "fwd"
    inner.set_content("inner text")
    inner.add_attachment(PDF, maintype="application", subtype="pdf", filename="inner.pdf")
    inner.add_attachment(make_pe(), maintype="application", subtype="octet-stream",
                         filename="inner.exe")

    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = "a@example.org", "b@example.net", "s"
    outer.set_content("plain body")
    outer.add_alternative("<p>html body</p>", subtype="html")
    outer.make_mixed()
    outer.add_attachment(b"GIF89a" + bytes(20), maintype="image", subtype="gif",
                         filename="logo.gif", disposition="inline")
    outer.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream")
    outer.add_attachment(inner)  # message/rfc822

    files = by_name(extract_files(outer.as_bytes()))
    assert {name: item.path for name, item in files.items()} == {
        "logo.gif": "2", "attachment-3.bin": "3", "inner.pdf": "4.2", "inner.exe": "4.3"}
    assert files["logo.gif"].detected_type == "gif"
    assert files["inner.exe"].detected_type == "exe"


def test_single_part_message_that_is_an_attachment():
    raw = (b"From: a@b\r\nSubject: s\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=\"only.pdf\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n")
    [item] = extract_files(raw)
    assert (item.name, item.path, item.detected_type, item.content) == \
        ("only.pdf", "1", "pdf", b"%PDF-1.4\n")


def test_encoded_and_unsafe_file_names():
    raw = (b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
           b"--XX\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=\"=?utf-8?B?0YHRh9C10YIucGRm?=\"\r\n\r\n"
           b"%PDF-1.4\r\n"
           b"--XX\r\nContent-Disposition: attachment; filename*=utf-8''%D1%81%D1%87.exe\r\n\r\n"
           b"MZ\r\n"
           b"--XX\r\nContent-Disposition: attachment; filename=\"..\\\\..\\\\evil.js\"\r\n\r\n"
           b"x=1\r\n--XX--\r\n")
    assert [item.name for item in extract_files(raw)] == ["счет.pdf", "сч.exe", "evil.js"]


# --- malformed input never raises ------------------------------------------------------

MALFORMED = {
    "garbage": b"\x00\xff\xfe garbage \x80\x81",
    "empty": b"",
    "headers only": b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n",
    "no boundary": b"From: a@b\r\nContent-Type: multipart/mixed\r\n\r\n--XX\r\nfoo\r\n",
    "unterminated": (b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
                     b"--XX\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n\r\n%PDF-1.4\r\n"
                     b"--XX\r\nContent-Type: application/octet-stream; name=\"b.exe\"\r\n"
                     b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMA"),
    "bad base64": (b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
                   b"--XX\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\n!!not*base64@@\r\n--XX--\r\n"),
    "empty rfc822": (b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
                     b"--XX\r\nContent-Type: message/rfc822\r\n\r\n--XX--\r\n"),
    "bad charset": (b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
                    b"--XX\r\nContent-Disposition: attachment; "
                    b"filename=\"=?no-such-cs?Q?x.pdf?=\"; filename*=bogus''%FF\r\n\r\n"
                    b"%PDF\r\n--XX--\r\n"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_do_not_raise(name):
    result = extract(MALFORMED[name], {"pdf"})
    assert isinstance(result.files, list) and isinstance(result.problems, list)


def test_readable_parts_of_a_broken_message_are_kept_and_defects_recorded():
    result = extract(MALFORMED["unterminated"])
    assert [item.name for item in result.files] == ["a.pdf", "b.exe"]
    assert any("CloseBoundaryNotFound" in problem for problem in result.problems)
    assert any("NoBoundaryInMultipart" in p for p in extract(MALFORMED["no boundary"]).problems)


def test_a_part_that_fails_is_recorded_unchecked(monkeypatch, make_mail):
    real = extract_module.detect_type

    def fragile(content, filename=None):
        if filename == "bad.pdf":
            raise RuntimeError("cannot read this part")
        return real(content, filename)

    monkeypatch.setattr(extract_module, "detect_type", fragile)
    raw = make_mail([("bad.pdf", PDF, "application/pdf"), ("good.pdf", PDF, "application/pdf")])
    result = extract(raw, {"pdf"})
    assert [(item.name, item.cause) for item in result.files] == [("part-2", "unparseable"), ("good.pdf", "")]
    assert result.files[0].selected       # reported whatever its type: it was not looked at
    assert result.problems == ["2: skipped (RuntimeError: cannot read this part)"]


def test_nesting_beyond_the_limit_is_recorded_not_followed():
    depth = extract_module.MAX_DEPTH + 5
    raw = b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"B0\"\r\n\r\n"
    for level in range(1, depth):
        raw += b"--B%d\r\nContent-Type: multipart/mixed; boundary=\"B%d\"\r\n\r\n" % (level - 1,
                                                                                   level)
    raw += b"--B%d\r\nContent-Type: application/pdf; name=\"deep.pdf\"\r\n\r\n%%PDF\r\n" % (
        depth - 1)
    result = extract(raw)
    assert [(item.cause, item.content) for item in result.files] == [("too-deep", b"")]
    assert any("nested more than 32 levels" in problem for problem in result.problems)


# --- reporting -------------------------------------------------------------------------

def test_not_analysable_reason_and_describe():
    item = FileItem(name="a.pdf", content=PDF, detected_type="pdf",
                    mime_type="application/pdf", path="2", selected=True)
    assert not_analysable_reason(item) is None
    assert not_analysable_reason(item, {"format_name": "pdf", "platforms": ["win7x64"]}) is None
    assert "recognise" in not_analysable_reason(item, {"format_name": "", "platforms": []})
    assert "larger" in not_analysable_reason(item, max_size=10)
    empty = FileItem(name="e", content=b"", detected_type="", mime_type="application/x",
                     path="3", selected=True)
    assert not_analysable_reason(empty) == "empty file"
    assert describe(item).startswith("a.pdf [pdf, application/pdf, %d bytes" % len(PDF))


# --- hiding places (tests/support/hostile.py) ------------------------------------------------

def _hidden_files():
    from support.hostile import HIDDEN_FILES
    return HIDDEN_FILES


@pytest.mark.parametrize("name, raw, expected", _hidden_files(), ids=[h[0] for h in _hidden_files()])
def test_every_hiding_place_is_found_or_has_a_cause(name, raw, expected):
    from support.mail import EICAR
    selected = extract(raw, {"exe"}).selected
    if expected == "analysed":
        assert any(EICAR in item.content and item.detected_type == "exe" and not item.cause
                   for item in selected)
    else:
        assert expected in {item.cause for item in selected}


def test_tnef_made_of_tiny_objects_is_refused_in_linear_time():
    import struct
    import time
    blob = struct.pack("<IH", 0x223E9F78, 1) + (struct.pack("<BHHI", 1, 0x8008, 1, 1) + b"x" + struct.pack("<H", 120)) * 400000
    started = time.monotonic()
    with pytest.raises(containers.Unreadable) as refused:
        containers.tnef_files(blob)
    assert time.monotonic() - started < 2 and refused.value.cause == "unparseable"


def test_begin_lines_in_prose_cost_nothing():
    import time
    text = b"begin 644 \r\n" * 200000 + b"begin the meeting at 10\r\n" * 1000
    started = time.monotonic()
    assert containers.uuencoded_files(text) == []
    assert time.monotonic() - started < 2
