"""BCC reports over TLS: a real STARTTLS server (aiosmtpd) with certificates made here by openssl.

The reporter's password goes only over a verified TLS connection, unless BccSmtpTls = Off
says otherwise; every TLS problem is a logged, retried delivery failure with a clear reason.
"""
import shutil
import smtplib
import ssl
import subprocess
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from support.mail import EICAR, mail_with, pe_image, vxcube_params

from salmon_app.config import SocketAddr
from salmon_app.storage.models import Message

USER, PASSWORD = "reporter@corp.test", "tls-Rep0rter-pw"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate it signed for 127.0.0.1 and localhost, and an unrelated CA."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)
    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2", "-subj", "/CN=vxgate test " + ca,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=reports.test")
    (d / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    (d / "ca-dir").mkdir()
    shutil.copy(d / "ca.pem", d / "ca-dir" / "private-ca.pem")
    return d


class Recorder:
    """The report server's handler: messages received, AUTH attempts (and whether over TLS)."""

    def __init__(self):
        self.messages, self.auth = [], []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 2.0.0 Ok"

    def authenticate(self, server, session, envelope, mechanism, data):
        self.auth.append((data.login.decode(), data.password.decode(), session.ssl is not None))
        return AuthResult(success=(data.login, data.password) == (USER.encode(), PASSWORD.encode()))


class _Controller(Controller):
    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]    # bound to port 0: learn the real one
        super()._trigger_server()


@pytest.fixture
def report_server(certs):
    servers = []

    def start(tls=True):
        recorder = Recorder()
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certs / "server.pem", certs / "server.key")
        # without TLS it offers AUTH in cleartext: what an attacker who strips STARTTLS shows
        controller = _Controller(recorder, hostname="127.0.0.1", port=0, tls_context=context,
                                 authenticator=recorder.authenticate, auth_require_tls=False)
        controller.start()
        servers.append(controller)
        recorder.port = controller.port
        return recorder
    yield start
    for controller in servers:
        controller.stop()


def start_bcc(vxgate, vxsim, server, host="127.0.0.1", **tls):
    gw = vxgate(**vxcube_params(vxsim), BccSocket=SocketAddr("127.0.0.1", 0),
                BccMonitorAddresses=["monitor@bcc.example.internal"], BccReporterAddress=USER,
                BccReporterPassword=PASSWORD, BccReportRecipientAddress="admin@corp.test",
                BccSmtpServer=SocketAddr(host, server.port), **tls)
    with smtplib.SMTP("127.0.0.1", gw.gateway.servers[1].port, timeout=30) as client:
        client.sendmail("alice@corp.test", ["monitor@bcc.example.internal"],
                        mail_with([("invoice.exe", pe_image(EICAR))], subject="Your invoice"))
    return gw


def wait_report(condition, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = Message.get_or_none(Message.mode == "report")
        if row is not None and condition(row):
            return row
        time.sleep(0.05)
    raise AssertionError([(r.id, r.mode, r.state, r.attempts, r.last_reply) for r in Message.select()])


def retried_with(text):
    """The report was deferred at least twice, its last reply saying ``text``."""
    return lambda row: row.state == "deferred" and row.attempts >= 2 and text in row.last_reply


@pytest.mark.parametrize("host, ca", [("127.0.0.1", "ca.pem"), ("127.0.0.1", "ca-dir"), ("localhost", "ca.pem")])
def test_verified_tls_to_an_ip_address_or_name_with_a_private_ca(vxgate, vxsim, report_server, certs, caplog,
                                                                 host, ca):
    server = report_server()
    start_bcc(vxgate, vxsim, server, host=host, BccSmtpCaFile=str(certs / ca))
    wait_report(lambda row: row.state == "delivered")
    assert len(server.messages) == 1 and server.messages[0].rcpt_tos == ["admin@corp.test"]
    assert server.auth == [(USER, PASSWORD, True)]               # the password went over TLS only
    assert PASSWORD not in caplog.text


def test_stripped_starttls_sends_no_password_and_retries(vxgate, vxsim, report_server, caplog):
    server = report_server(tls=False)
    start_bcc(vxgate, vxsim, server)                              # BccSmtpTls = Auto, the default
    row = wait_report(retried_with("offers no STARTTLS"))
    assert server.auth == [] and server.messages == []
    assert "password is not sent in cleartext" in row.last_reply
    assert "deferred admin@corp.test" in caplog.text and "offers no STARTTLS" in caplog.text
    assert Message.get(Message.mode == "bcc").state == "reported"


def test_certificate_from_another_ca_is_a_clear_retried_failure(vxgate, vxsim, report_server, certs, caplog):
    server = report_server()
    start_bcc(vxgate, vxsim, server, BccSmtpCaFile=str(certs / "other-ca.pem"))
    row = wait_report(retried_with("certificate not trusted"))
    assert server.auth == [] and server.messages == []
    assert "TLS: certificate not trusted" in caplog.text
    assert "check_hostname" not in row.last_reply


def test_system_cas_do_not_trust_a_private_certificate(vxgate, vxsim, report_server):
    server = report_server()
    start_bcc(vxgate, vxsim, server, BccSmtpTls="StartTls")
    wait_report(retried_with("certificate not trusted"))
    assert server.auth == [] and server.messages == []


def test_verify_off_encrypts_without_checking(vxgate, vxsim, report_server, certs):
    server = report_server()
    start_bcc(vxgate, vxsim, server, BccSmtpCaFile=str(certs / "other-ca.pem"), BccSmtpVerifyTls=False)
    wait_report(lambda row: row.state == "delivered")
    assert server.auth == [(USER, PASSWORD, True)]


def test_off_explicitly_allows_cleartext(vxgate, vxsim, report_server):
    server = report_server(tls=False)
    start_bcc(vxgate, vxsim, server, BccSmtpTls="Off")
    wait_report(lambda row: row.state == "delivered")
    assert server.auth == [(USER, PASSWORD, False)] and len(server.messages) == 1


def test_missing_ca_file_is_a_clear_retried_failure(vxgate, vxsim, report_server, tmp_path):
    server = report_server()
    start_bcc(vxgate, vxsim, server, BccSmtpCaFile=str(tmp_path / "no-such-ca.pem"))
    wait_report(retried_with("cannot load the CA certificates"))
    assert server.auth == [] and server.messages == []
