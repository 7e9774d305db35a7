"""``vxgate doctor`` as an administrator runs it: every check passing, then each one failing."""
import os
import socket
import subprocess
import sys

import pytest

from support.mail import VXCUBE_KEY
from salmon_app.sink import SinkServer

VXGATE = os.path.join(os.path.dirname(sys.executable), "vxgate")


def doctor(ini):
    result = subprocess.run([VXGATE, "doctor", "-c", str(ini)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def setup(tmp_path, sink, vxsim):
    report = SinkServer(require_auth=("reporter@corp.test", "pw-ok")).start()
    spool, db = tmp_path / "spool", tmp_path / "q.db"
    spool.mkdir(mode=0o700)

    def write(**override):
        values = {
            "Root": {"UseVxcube": "Yes", "VxcubeApiAddress": vxsim.url, "VxcubeApiKey": VXCUBE_KEY},
            "MailD": {"SmtpSocket": "127.0.0.1:%d" % free_port(), "SmtpSenderRelay": "127.0.0.1:%d" % sink.port,
                      "BccSocket": "127.0.0.1:%d" % free_port(), "BccMonitorAddresses": "monitor@bcc.test",
                      "BccReporterAddress": "reporter@corp.test", "BccReporterPassword": "pw-ok",
                      "BccReportRecipientAddress": "admin@corp.test", "BccSmtpServer": "127.0.0.1:%d" % report.port,
                      "BccSmtpTls": "Off",     # the sink has no STARTTLS; Off lets AUTH go in cleartext
                      "SmtpHook": "config/hooks/default.lua"},
            "Quarantine": {"SpoolDir": str(spool), "DatabasePath": str(db)},
        }
        for key, value in override.items():
            section = next(s for s, params in values.items() if key in params)
            values[section][key] = value
        ini = tmp_path / "vxgate.ini"
        ini.write_text("".join("[%s]\n%s" % (s, "".join("%s = %s\n" % kv for kv in p.items()))
                               for s, p in values.items()))
        return ini
    yield write
    report.stop()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_all_checks_pass_except_vxgate_not_running(setup):
    code, out = doctor(setup())
    assert code == 0, out
    assert "ok   vxCube" in out and "uploads 0 of" in out
    assert "ok   BccSmtpServer" in out and "AUTH as reporter@corp.test accepted" in out
    assert "WARN SmtpSocket" in out and "vxgate is not running" in out
    assert "pw-ok" not in out and VXCUBE_KEY not in out


@pytest.mark.parametrize("override, line, fix", [
    ({"SmtpSenderRelay": "127.0.0.1:1"}, "FAIL SmtpSenderRelay", "re-injection"),
    ({"VxcubeApiKey": "00000000-0000-0000-0000-000000000000"}, "FAIL vxCube", "check VxcubeApiKey"),
    ({"VxcubeApiAddress": "http://127.0.0.1:1"}, "FAIL vxCube", "check VxcubeApiAddress"),
    ({"BccReporterPassword": "wrong"}, "FAIL BccSmtpServer", "BccReporterPassword"),
    ({"BccSmtpTls": "Auto"}, "FAIL BccSmtpServer", "password is not sent in cleartext"),
    ({"SmtpHook": "function smtp_hook(ctx) return {action = end"}, "FAIL SmtpHook", "vxgate reload"),
    ({"SmtpSocket": "192.0.2.1:10025"}, "FAIL SmtpSocket", "local address"),
])
def test_each_failing_check_names_a_fix(setup, override, line, fix):
    code, out = doctor(setup(**override))
    assert code == 1 and line in out and fix in out, out


def test_socket_used_by_another_program(setup):
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        code, out = doctor(setup(SmtpSocket="127.0.0.1:%d" % other.getsockname()[1]))
    finally:
        other.close()
    assert code == 1 and "FAIL SmtpSocket" in out and "another program" in out


def test_storage_permissions(setup, tmp_path):
    ini = setup()
    os.chmod(tmp_path / "spool", 0o755)
    code, out = doctor(ini)
    assert code == 1 and "FAIL SpoolDir" in out and "chmod 0700" in out


def test_bad_configuration(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[MailD]\nSmtpSockett = 1\n")
    code, out = doctor(ini)
    assert code == 1 and "FAIL configuration" in out and ":2: unknown parameter" in out


def test_bad_vxcube_address_is_a_configuration_failure_not_a_traceback(setup):
    code, out = doctor(setup(VxcubeApiAddress="ftp://x"))
    assert code == 1 and "FAIL configuration" in out and "bad value for VxcubeApiAddress: 'ftp://x'" in out
    assert "Traceback" not in out


def _shared(ini, url):
    """The same installation on a shared PostgreSQL database instead of its SQLite file."""
    text = "".join(line + "\n" for line in ini.read_text().splitlines() if not line.startswith("DatabasePath"))
    ini.write_text(text.replace("[Quarantine]\n", "[Quarantine]\nDatabaseUrl = %s\n" % url))
    return ini


def test_shared_database_schema_and_node_clocks(setup, pg_cluster):
    from support.pgcluster import PASSWORD
    url = pg_cluster.new_database()
    name = url.rsplit("/", 1)[1]
    pg_cluster.sql("INSERT INTO node (name, started, seen, skew, version) VALUES "
                   "('mx1', extract(epoch from now()), extract(epoch from now()), 0.1, '')", name)
    code, out = doctor(_shared(setup(), url))
    assert code == 0, out
    assert "ok   database" in out and "schema 1" in out and "***@127.0.0.1" in out
    assert "ok   node clocks" in out and "mx1" in out
    assert PASSWORD not in out
    pg_cluster.sql("UPDATE node SET skew = 30", name)
    code, out = doctor(_shared(setup(), url))
    assert "WARN node clocks" in out and "mx1 +30.0s" in out and "NTP" in out, out


def test_shared_database_not_upgraded_or_unreachable(setup, pg_cluster):
    from support.pgcluster import PASSWORD
    code, out = doctor(_shared(setup(), pg_cluster.new_database(schema=False)))
    assert code == 1 and "FAIL database" in out and "fix: vxgate db upgrade" in out, out
    wrong = pg_cluster.new_database().replace(PASSWORD, "not-the-password")
    code, out = doctor(_shared(setup(), wrong))
    assert code == 1 and "FAIL database" in out and "pg_hba.conf" in out, out
    assert "not-the-password" not in out and "Traceback" not in out
