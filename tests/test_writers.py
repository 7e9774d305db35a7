"""Every header vxgate writes, tried with every hostile value: one line each, never a new field.

The writers are the BCC report (end to end over SMTP with the vxCube emulator), the
administrator notice, the bounce, the repack note and the hook's header edits. Each is given
every entry of hostile.HEADER_VALUES and every hostile.ENCODED_SUBJECTS entry as the gateway
decodes it (and raw), and the output is parsed back the way a mail client would.
"""
import email
import email.header
import email.policy
import email.utils
import smtplib
import time
from types import SimpleNamespace

import pytest

from support import hostile
from support.mail import EICAR, mail_with, pe_image, vxcube_params
from support.policy_data import EXE, multipart
from support.sink import SinkServer

from salmon_app import compose, dsn
from salmon_app.config import SocketAddr
from salmon_app.gateway import parse_headers
from salmon_app.storage.models import Message
from salmon_app.policy import apply_modifications

# text as the gateway records it: the values themselves, and each encoded Subject decoded
TEXTS = hostile.HEADER_VALUES + [parse_headers(("Subject: %s\r\n\r\n" % s).encode())["subject"]
                                 for s in hostile.ENCODED_SUBJECTS]
IDS = ["value%d" % n for n in range(len(hostile.HEADER_VALUES))] + \
      ["encoded%d" % n for n in range(len(hostile.ENCODED_SUBJECTS))]


def check_header_block(data, expected):
    """The fields of ``data``'s header block are exactly ``expected``, each on lines of its own."""
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    lines = head.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    names = [line.split(b":", 1)[0].decode("latin-1") for line in lines if line[:1] not in (b" ", b"\t")]
    assert sorted(names) == sorted(expected)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert sorted(parsed.keys()) == sorted(expected)
    for name in expected:
        value = str(parsed[name])
        assert value.isprintable(), (name, value)       # one line, no control or bidi character
    return parsed


def parts_have_only(message, allowed):
    """Every MIME part below ``message`` has only fields of ``allowed``."""
    for part in message.iter_parts():
        assert set(part.keys()) <= allowed, part.keys()
        if part.get_content_maintype() == "multipart":
            parts_have_only(part, allowed)


def body_line_after(text, label):
    lines = text.splitlines()
    (index,) = [n for n, line in enumerate(lines) if line.strip().startswith(label)]
    return lines[index + 1]


# ------------------------------------------------------------------ administrator notice
NOTICE_FIELDS = ["Content-Type", "MIME-Version", "Content-Transfer-Encoding", "From", "To", "Subject",
                 "Date", "Message-ID", "Auto-Submitted"]


@pytest.mark.parametrize("text", TEXTS, ids=IDS)
def test_admin_notice(text):
    row = SimpleNamespace(id="Q1", mail_from=text, rcpt_to=[text, "b@x.test"], subject=text, verdict="dangerous",
                          action="quarantine")
    parsed = check_header_block(dsn.notice("vxgate.test", row, "kept: " + text, text, "admin@corp.test",
                                           files=["%s(exe):dangerous" % text]), NOTICE_FIELDS)
    body = parsed.get_content()
    assert body_line_after(body, "Subject:").startswith("Verdict:")      # no line forged in the body
    assert body_line_after(body, "Reason:") == ""
    assert body.isascii() or all(line.isprintable() for line in body.splitlines())


# ------------------------------------------------------------------ bounce
BOUNCE_FIELDS = ["Content-Type", "MIME-Version", "From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted"]


@pytest.mark.parametrize("text", TEXTS, ids=IDS)
def test_bounce(text):
    row = SimpleNamespace(id="Q2", mail_from=text, created=time.time())
    failures = [(text, 550, "5.1.1 " + text), ("b@x.test", 554, "5.7.1 first line\n" + text)]
    parsed = check_header_block(dsn.build("vxgate.test", row, failures, b"Subject: x\r\n\r\n"), BOUNCE_FIELDS)
    parts_have_only(parsed, {"Content-Type", "MIME-Version", "Content-Transfer-Encoding"})
    notice, status, _ = parsed.iter_parts()
    assert len(notice.get_content().splitlines()) == 7           # five lines of text, one per failure
    blocks = status.get_payload()
    assert [sorted(b.keys()) for b in blocks] == [
        ["Arrival-Date", "Reporting-MTA", "X-Vxgate-Queue-ID"]] + 2 * [
        ["Action", "Diagnostic-Code", "Final-Recipient", "Status"]]
    for block in blocks:
        assert all(str(v).isprintable() for v in block.values())


# ------------------------------------------------------------------ repack note and hook edits
@pytest.mark.parametrize("text", TEXTS, ids=IDS)
def test_repack_note_and_hook_header_edits(text):
    raw = multipart([("Setup.exe", EXE)])
    encoded = email.utils.encode_rfc2231(text, "utf-8").encode()
    raw = raw.replace(b'filename="Setup.exe"', b"filename*=" + encoded)
    out = apply_modifications(raw, [{"op": "repack", "path": "2", "password": None, "message": ""},
                                    {"op": "add_header_field", "name": "X-Hook", "value": text},
                                    {"op": "change_header_field", "name": "Subject", "value": "[TAG] " + text}])
    parsed = check_header_block(out, ["Received", "From", "To", "Subject", "Date", "Message-ID",
                                      "MIME-Version", "Content-Type", "X-Hook"])
    assert str(parsed["Subject"]).startswith("[TAG]")
    parts_have_only(parsed, {"Content-Type", "MIME-Version", "Content-Transfer-Encoding", "Content-Disposition"})
    for part in parsed.walk():
        for line in part.as_bytes(policy=email.policy.SMTP).split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            assert len(line) <= 998
    (archive,) = [p for p in parsed.walk() if p.get_content_type() == "application/zip"]
    assert archive.get_filename().isprintable() and archive.get_filename().endswith(".zip")
    (note,) = [p for p in parsed.walk() if p.get_content_type() == "text/plain" and "archive" in p.get_content()]
    assert all(line.isprintable() for line in note.get_content().splitlines())


# ------------------------------------------------------------------ the second line of defence
@pytest.mark.parametrize("value", ["a\r\nBcc: x@attacker.test", "a\nb", "a\rb",
                                   "=?utf-8?q?a=0D=0ABcc=3A_x=40attacker=2Etest?="])
def test_put_never_writes_a_line_break(value):
    from email.mime.text import MIMEText
    message = MIMEText("x", policy=compose.POLICY)
    compose.put(message, "Subject", value, placeholder="(subject not shown)")
    parsed = check_header_block(compose.to_bytes(message), ["Content-Type", "MIME-Version",
                                                            "Content-Transfer-Encoding", "Subject"])
    assert str(parsed["Subject"]).strip() in ("(subject not shown)", value.replace("=?", "= ?"))


# ------------------------------------------------------------------ BCC report, end to end
PASSWORD = "writers-Rep0rter-pw"
REPORT_FIELDS = ["Content-Type", "MIME-Version", "From", "To", "Subject", "Date", "Message-ID",
                 "Auto-Submitted", "X-Vxgate-Report"]


def test_bcc_reports_for_crafted_subjects_over_smtp(vxgate, vxsim):
    """An EICAR copy per hostile Subject: each gives exactly one report, none with a forged field."""
    reports = SinkServer(require_auth=("reporter@corp.test", PASSWORD))
    reports.start()
    try:
        gw = vxgate(**vxcube_params(vxsim), BccSocket=SocketAddr("127.0.0.1", 0),
                    BccMonitorAddresses=["monitor@bcc.example.internal"], BccReporterAddress="reporter@corp.test",
                    BccReporterPassword=PASSWORD, BccReportRecipientAddress="admin@corp.test",
                    BccSmtpServer=SocketAddr("127.0.0.1", reports.port), BccSmtpTls="Off")
        subjects = [email.header.Header(v, "utf-8").encode(linesep="\r\n") for v in hostile.HEADER_VALUES]
        subjects += hostile.ENCODED_SUBJECTS
        with smtplib.SMTP("127.0.0.1", gw.gateway.servers[1].port, timeout=30) as client:
            for n, subject in enumerate(subjects):
                data = mail_with([("invoice.exe", pe_image(EICAR))], subject="placeholder-%d" % n)
                data = data.replace(b"Subject: placeholder-%d" % n, b"Subject: " + subject.encode())
                client.sendmail("alice@corp.test", ["monitor@bcc.example.internal"], data)
        received = reports.wait_for(len(subjects), 90)
        time.sleep(1.0)                                   # nothing more comes
        assert len(reports.messages) == len(subjects)
        copies = list(Message.select().where(Message.mode == "bcc"))
        assert {(c.state, c.verdict) for c in copies} == {("reported", "dangerous")}
        seen = []
        for report in received:
            parsed = check_header_block(report.data, REPORT_FIELDS)
            assert str(parsed["Subject"]).strip().startswith("[vxgate] DANGEROUS: ")
            seen.append(str(parsed["X-Vxgate-Report"]))
            text = parsed.get_body(("plain",)).get_content()
            assert body_line_after(text, "Subject:").strip().startswith("From:")
            html = parsed.get_body(("html",)).get_content()
            assert "<script>" not in html and "<img" not in html
        assert sorted(seen) == sorted(c.id for c in copies)   # exactly one report per copy
    finally:
        reports.stop()
