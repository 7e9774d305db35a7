"""apply_modifications: byte-exact header edits, repacking into AES zips, RepackPassword."""
import email
import email.policy
import io
import re

import pyzipper
import pytest
from support.policy_data import EXE, PLAIN, multipart

from salmon_app.policy import Decision, RepackPassword, apply_modifications, parse_mime

HMAC = RepackPassword.parse("HMAC(s3cret)")


def header_op(op, name, value):
    return {"op": op, "name": name, "value": value}


def repack_op(path=None, password=None, message=""):
    return {"op": "repack", "path": path, "password": password, "message": message}


def test_no_modifications_gives_the_same_bytes():
    raw = multipart([("a.exe", EXE)])
    assert apply_modifications(raw, Decision("accept"), password=HMAC) is raw
    assert apply_modifications(raw, [], password=HMAC) is raw


def test_add_header_appends_to_the_header_block_only():
    raw = multipart([("a.exe", EXE)])
    out = apply_modifications(raw, [header_op("add_header_field", "X-Vxgate-Verdict", "clean")])
    head, body = raw.split(b"\r\n\r\n", 1)
    assert out == head + b"\r\nX-Vxgate-Verdict: clean\r\n\r\n" + body


def test_change_header_replaces_the_first_field_with_its_folded_lines():
    raw = b"Subject: old\r\n  folded\r\nX-A: 1\r\nSubject: second\r\n\r\nbody\r\n"
    out = apply_modifications(raw, [header_op("change_header_field", "subject", "new")])
    assert out == b"subject: new\r\nX-A: 1\r\nSubject: second\r\n\r\nbody\r\n"


def test_change_of_a_missing_header_adds_it_and_lf_messages_stay_lf():
    raw = b"From: a@b\n\nbody\n"
    out = apply_modifications(raw, [header_op("change_header_field", "X-New", "v")])
    assert out == b"From: a@b\nX-New: v\n\nbody\n"


def test_non_ascii_values_are_rfc2047_encoded_and_injection_is_defused():
    raw = b"Subject: x\r\n\r\nbody\r\n"
    out = apply_modifications(raw, [
        header_op("change_header_field", "Subject", "[SUSPICIOUS] Привет"),
        header_op("add_header_field", "X-Evil", "a\r\nBcc: victim@example.com")])
    assert out.isascii() and b"\r\nBcc:" not in out
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert parsed["Subject"] == "[SUSPICIOUS] Привет"
    assert parsed["X-Evil"] == "a Bcc: victim@example.com"


def test_header_only_message():
    out = apply_modifications(b"Subject: x", [header_op("add_header_field", "X-A", "1")])
    assert out == b"Subject: x\nX-A: 1\n"


def _zip_member(part_bytes, password):
    archive = pyzipper.AESZipFile(io.BytesIO(part_bytes))
    if password:
        archive.setpassword(password.encode())
    (name,) = archive.namelist()
    return name, archive.read(name)


def _identifier(text):
    return re.search(r"Identifier: (\S+)", text).group(1)


def test_repack_a_part():
    raw = multipart([("report.pdf", b"%PDF fake"), ("Setup.exe", EXE)],
                    extra_headers=[b"DKIM-Signature: v=1; a=rsa-sha256; b=xyz"])
    out = apply_modifications(raw, [repack_op("3", message="Found dangerous.")],
                              password=HMAC, queue_id="Q1")
    old, new = parse_mime(raw), parse_mime(out)
    # Everything but the repacked part is byte-identical, including the header block.
    assert out[:old.part_at("3").start] == raw[:old.part_at("3").start]
    assert out.endswith(raw[old.part_at("3").end:])
    assert new.part_at("3").content_type == "multipart/mixed"
    notice, archive = new.part_at("3").children
    text = notice.text
    assert "Found dangerous." in text and '"Setup.exe"' in text
    identifier = _identifier(text)
    assert identifier.startswith("Q1-")
    assert archive.name == "Setup.exe.zip" and archive.content_type == "application/zip"
    assert _zip_member(archive.decoded, HMAC.password_for(identifier)) == ("Setup.exe", EXE)
    with pytest.raises(RuntimeError):   # the archive really is encrypted
        _zip_member(archive.decoded, None)


def test_repack_the_whole_message_keeps_its_headers():
    raw = multipart([("Setup.exe", EXE)])
    out = apply_modifications(raw, [repack_op(None), repack_op("2"),
                                    header_op("add_header_field", "X-Vxgate-Verdict", "dangerous")],
                              password=RepackPassword.parse("Plain(infected)"), queue_id="Q2")
    new = parse_mime(out)
    for name in ("Received", "From", "To", "Subject", "Date", "Message-ID"):
        assert new.header(name) == parse_mime(raw).header(name)
    assert new.header("X-Vxgate-Verdict") == "dangerous"
    assert new.content_type == "multipart/mixed" and len(new.children) == 2
    archive = new.children[1]
    assert archive.name == "quarantine.zip"
    assert _zip_member(archive.decoded, "infected") == ("message.eml", raw)
    assert "administrator has the password" in new.children[0].text


def test_repack_of_a_single_part_message_body():
    out = apply_modifications(PLAIN, [repack_op("1", password=RepackPassword.parse("None"))])
    new = parse_mime(out)
    assert new.header("Subject") == "hi" and new.content_type == "multipart/mixed"
    name, data = _zip_member(new.children[1].decoded, None)
    assert (name, data) == ("attachment-1.bin", b"Just text.\r\n")
    assert "not password protected" in new.children[0].text


def test_nested_repacks_collapse_into_the_outer_part():
    inner = multipart([("x.exe", EXE)], eol=b"\n")
    raw = (b"From: a@example.org\nContent-Type: multipart/mixed; boundary=outer\n\n--outer\n"
           b"Content-Type: text/plain\n\nhi\n--outer\nContent-Type: message/rfc822\n"
           b"Content-Disposition: attachment; filename=fwd.eml\n\n" + inner + b"--outer--\n")
    out = apply_modifications(raw, [repack_op("2.2"), repack_op("2")])
    new = parse_mime(out)
    assert [c.content_type for c in new.part_at("2").children] == ["text/plain", "application/zip"]
    # The line break before the next delimiter belongs to the delimiter, not to the part.
    assert _zip_member(new.part_at("2.2").decoded, None) == ("fwd.eml", inner[:-1])


def test_hook_password_overrides_the_configured_one(run):
    raw = multipart([("Setup.exe", EXE)])
    decision = run("ctx.modifier.repack('2'); ctx.modifier.repack_password = 'qwerty';"
                   "ctx.modifier.repack_message = 'Threat found'; return {action = 'accept'}", raw)
    out = apply_modifications(raw, decision, password=HMAC, queue_id="Q1")
    notice, archive = parse_mime(out).part_at("2").children
    assert _zip_member(archive.decoded, "qwerty") == ("Setup.exe", EXE)
    assert "Threat found" in notice.text
    assert "qwerty" not in repr(decision)


def test_repack_password():
    assert RepackPassword.parse("None").password_for("id") is None
    assert RepackPassword.parse(" plain(pa ss) ").password_for("id") == "pa ss"
    derived = RepackPassword.parse("HMAC(k)").password_for("Q1-00ff")
    assert re.fullmatch(r"[0-9a-f]{16}", derived)
    assert derived == RepackPassword.parse("hmac(k)").password_for("Q1-00ff")
    assert derived != RepackPassword.parse("HMAC(other)").password_for("Q1-00ff")
    assert "s3cret" not in repr(HMAC) and "s3cret" not in str(HMAC)
    for bad in ("", "Plain()", "HMAC", "None(x)", "Secret(x)", "Plain(x"):
        with pytest.raises(ValueError, match="None, Plain"):
            RepackPassword.parse(bad)
