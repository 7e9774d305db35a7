"""BCC mode over real sockets: copies analysed by the emulator, reports through an AUTH server."""
import email
import smtplib
import threading
import time

import pytest

from support.mail import EICAR, mail_with, pe_image, vxcube_params
from support.sink import SinkServer

from salmon_app.config import SocketAddr
from salmon_app.storage.models import Message

pytestmark = pytest.mark.both_engines     # each test runs on SQLite and on PostgreSQL

PASSWORD = "s3cret-Rep0rter-pw"


@pytest.fixture
def report_server():
    server = SinkServer(require_auth=("reporter@corp.test", PASSWORD))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bcc(vxgate, vxsim, report_server):
    def start(**extra):
        gw = vxgate(**vxcube_params(vxsim), BccSocket=SocketAddr("127.0.0.1", 0),
                    BccMonitorAddresses=["monitor@bcc.example.internal", "@bcc2.example.internal"],
                    BccReporterAddress="reporter@corp.test", BccReporterPassword=PASSWORD,
                    BccReportRecipientAddress="admin@corp.test",
                    BccSmtpServer=SocketAddr("127.0.0.1", report_server.port),
                    **dict(dict(BccSmtpTls="Off"), **extra))   # the sink has no STARTTLS (TLS: test_bcc_tls.py)
        gw.bcc_port = gw.gateway.servers[1].port
        return gw
    return start


def send_copy(gw, data, rcpt="monitor@bcc.example.internal", sender="alice@corp.test"):
    with smtplib.SMTP("127.0.0.1", gw.bcc_port, timeout=10) as client:
        client.sendmail(sender, [rcpt], data)


def wait_closed(count, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = list(Message.select().where(Message.mode == "bcc"))
        if len(rows) >= count and all(r.state in ("reported", "closed") for r in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError([(r.id, r.state) for r in Message.select()])


def test_dangerous_copy_gives_one_report_with_both_parts(bcc, report_server, sink, caplog):
    gw = bcc()
    data = mail_with([("invoice.exe", pe_image(EICAR))], subject="Your invoice")
    send_copy(gw, data)
    row = wait_closed(1)[0]
    assert row.state == "reported" and row.verdict == "dangerous"
    report = report_server.wait_for(1, 10)[0]
    assert report_server.auth_seen == [("reporter@corp.test", PASSWORD)]
    assert report.mail_from == "reporter@corp.test" and report.rcpt_tos == ["admin@corp.test"]
    parsed = email.message_from_bytes(report.data)
    assert parsed["Subject"] == "[vxgate] DANGEROUS: Your invoice"
    assert parsed["X-Vxgate-Report"] == row.id
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in parsed.walk() if not p.is_multipart()}
    assert set(parts) == {"text/plain", "text/html"}
    for text in parts.values():
        assert "invoice.exe" in text and "dangerous" in text and row.id in text
        assert row.message_id.strip("<>") in text and "alice@corp.test" in text
        assert "vxgate quarantine show " + row.id in text
    assert "<td>100</td>" in parts["text/html"]
    assert sink.messages == []                            # a copy is never delivered
    time.sleep(1.5)
    assert len(report_server.messages) == 1               # exactly one report
    assert PASSWORD not in caplog.text


def test_clean_copy_no_report(bcc, report_server):
    gw = bcc()
    send_copy(gw, mail_with([("fine.exe", pe_image(b"clean"))]))
    send_copy(gw, b"Subject: no files\r\n\r\nhello\r\n")
    rows = wait_closed(2)
    assert {r.state for r in rows} == {"closed"}
    time.sleep(1)
    assert report_server.messages == []


def test_mixed_copy_one_report_listing_both(bcc, report_server):
    gw = bcc()
    send_copy(gw, mail_with([("ok.exe", pe_image(b"fine")), ("odd.exe", pe_image(b"VXGATE-TEST-SUSPICIOUS"))],
                            subject="mixed"))
    wait_closed(1)
    report = email.message_from_bytes(report_server.wait_for(1, 10)[0].data).get_payload()[0].get_payload(
        decode=True).decode()
    assert "ok.exe" in report and "odd.exe" in report and "SUSPICIOUS" in report


def test_recipient_outside_the_monitoring_addresses_is_refused(bcc):
    gw = bcc()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send_copy(gw, b"Subject: x\r\n\r\nx\r\n", rcpt="someone@elsewhere.test")
    assert info.value.recipients["someone@elsewhere.test"][0] == 550
    send_copy(gw, b"Subject: x\r\n\r\nx\r\n", rcpt="anything@bcc2.example.internal")   # an @domain entry


def test_report_server_down_then_up_delivers_once(bcc, report_server):
    gw = bcc()               # first: a stopped server's port could be handed to vxgate's own listener
    report_server.stop()
    send_copy(gw, mail_with([("bad.exe", pe_image(EICAR))]))
    wait_closed(1)
    deadline = time.time() + 10
    while not Message.select().where(Message.mode == "report", Message.state == "deferred").exists():
        assert time.time() < deadline
        time.sleep(0.05)
    report_server.start()
    report_server.wait_for(1, 15)
    time.sleep(1.5)
    assert len(report_server.messages) == 1
    assert Message.get(Message.mode == "report").state == "delivered"


def test_hundred_copies_of_one_attachment_one_upload(bcc, report_server, vxsim):
    gw = bcc()
    data = mail_with([("same.exe", pe_image(EICAR))])
    threads = [threading.Thread(target=send_copy, args=(gw, data, "u%d@bcc2.example.internal" % n))
               for n in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_closed(100, timeout=60)
    assert vxsim.stats()["upload_requests"] == 1
    assert len(report_server.wait_for(100, 30)) == 100    # one report per copy


def test_own_report_copied_back_is_not_analysed(bcc, report_server, vxsim):
    gw = bcc()
    send_copy(gw, mail_with([("bad.exe", pe_image(EICAR))]))
    report = report_server.wait_for(1, 10)[0]
    send_copy(gw, report.data)        # the MTA's always_bcc copied our report to the monitor
    rows = wait_closed(2)
    assert sorted(r.state for r in rows) == ["closed", "reported"]
    time.sleep(1)
    assert len(report_server.messages) == 1


def test_original_attached_as_protected_archive_when_asked(bcc, report_server):
    import io
    import pyzipper
    from salmon_app.policy import RepackPassword
    gw = bcc(BccAttachOriginal=True, RepackPassword="HMAC(report-secret)")
    data = mail_with([("bad.exe", pe_image(EICAR))], subject="with original")
    send_copy(gw, data)
    row = wait_closed(1)[0]
    parsed = email.message_from_bytes(report_server.wait_for(1, 10)[0].data)
    (archive,) = [p for p in parsed.walk() if p.get_filename() == "original.zip"]
    with pyzipper.AESZipFile(io.BytesIO(archive.get_payload(decode=True))) as zf:
        zf.setpassword(RepackPassword.parse("HMAC(report-secret)").password_for(row.id).encode())
        assert zf.read(row.id + ".eml") == data
    assert {"text/plain", "text/html"} <= {p.get_content_type() for p in parsed.walk()}


def test_broken_custom_template_gives_way_to_the_built_in_one(bcc, report_server, tmp_path, caplog):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "bcc_report.txt").write_text("Subject: {{ subject \n")          # a syntax error
    (templates / "bcc_report.html").write_text("<p>custom {{ subject }}</p>\n")
    gw = bcc(BccTemplateDir=str(templates))
    send_copy(gw, mail_with([("bad.exe", pe_image(EICAR))], subject="templated"))
    row = wait_closed(1)[0]
    assert row.state == "reported"
    parsed = email.message_from_bytes(report_server.wait_for(1, 10)[0].data)
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in parsed.walk() if not p.is_multipart()}
    assert "vxgate BCC monitor" in parts["text/plain"] and "bad.exe" in parts["text/plain"]
    assert parts["text/html"].strip() == "<p>custom templated</p>"
    assert "report template bcc_report.txt" in caplog.text and "built-in template is used" in caplog.text
