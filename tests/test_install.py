"""The README's "Install on a VM" steps, followed for real: scripts/install-vm.sh on this machine's
own Postfix, mail through it, then the filter turned off again. Needs root and Postfix."""
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

from support.mail import ROOT
from support.postfix import postfix_skip_reason

pytestmark = [pytest.mark.postfix, pytest.mark.slow]


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture
def system_postfix():
    reason = postfix_skip_reason()
    if reason:
        pytest.skip(reason)
    if subprocess.run(["postfix", "status"], capture_output=True).returncode == 0:
        pytest.skip("the system Postfix is running; this test only uses a stopped one")
    for port in (25, 10025, 10026):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip("127.0.0.1:%d is in use; the installed services need it" % port)
    saved = {name: open("/etc/postfix/" + name).read() for name in ("main.cf", "master.cf")}
    yield
    subprocess.run(["postfix", "stop"], capture_output=True)
    for name, text in saved.items():
        with open("/etc/postfix/" + name, "w") as handle:
            handle.write(text)
    if os.path.exists("/etc/logrotate.d/vxgate"):
        os.unlink("/etc/logrotate.d/vxgate")


def test_install_on_a_vm_then_turn_off(system_postfix, sink):
    base = tempfile.mkdtemp(prefix="vxgate-vm-")
    os.chmod(base, 0o755)
    # an administrator's shell: none of the test boot's settings (config/testing.py sets VXGATE_LOGGING)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VXGATE_")}
    env.update(VXGATE_PREFIX=base + "/opt/vxgate", VXGATE_ETC=base + "/etc/vxgate",
               VXGATE_STATE=base + "/var/lib/vxgate", VXGATE_BINDIR=base + "/bin")
    prefix = env["VXGATE_PREFIX"]
    try:
        # step 2 of the README (step 1, getting the code, is this checkout)
        out = sh("bash", os.path.join(ROOT, "scripts", "install-vm.sh"), "--postfix", "--start", "--no-systemd",
                 env=env).stdout
        assert "==> start vxgate" in out
        # the test's own next hop stands in for the Internet
        # ("Local only" Debian installs set default_transport = error: make it an Internet site)
        sh("postconf", "-e", "relayhost = [127.0.0.1]:%d" % sink.port, "mydestination =",
           "default_transport = smtp", "relay_transport = relay",
           "smtp_host_lookup = native", "disable_dns_lookups = yes")
        sh("postfix", "reload")
        time.sleep(1)
        # the `vxgate` on the PATH, from any directory
        doctor = subprocess.run([base + "/bin/vxgate", "doctor"], cwd="/", capture_output=True,
                                text=True, env=dict(env, VXGATE_CONFIG=env["VXGATE_ETC"] + "/vxgate.ini"))
        assert "vxgate is listening" in doctor.stdout and doctor.returncode == 0, doctor.stdout
        assert "ok   PidFile" in doctor.stdout and base + "/var/lib/vxgate/vxgate.pid" in doctor.stdout
        # step 3: mail through Postfix and vxgate
        with smtplib.SMTP("127.0.0.1", 25, timeout=30) as client:
            client.sendmail("alice@example.test", ["bob@example.test"],
                            b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: through vxgate\r\n"
                            b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <vm1@example.test>\r\n\r\nhi\r\n")
        got = sink.wait_for(1, 60)[0]
        assert b"through vxgate" in got.data
        # the summary line follows the next hop's reply: wait for it, the sink may have been quicker
        deadline = time.time() + 30
        while "from=<alice@example.test> to=<bob@example.test>" not in open(prefix + "/logs/vxgate.log").read():
            assert time.time() < deadline, open(prefix + "/logs/vxgate.log").read()
            time.sleep(0.1)
        # step 5: turn the filter off again
        sh("postconf", "-e", "content_filter =")
        sh("postfix", "reload")
        time.sleep(1)
        with smtplib.SMTP("127.0.0.1", 25, timeout=30) as client:
            client.sendmail("alice@example.test", ["bob@example.test"],
                            b"From: alice@example.test\r\nSubject: without vxgate\r\n"
                            b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <vm2@example.test>\r\n\r\nhi\r\n")
        assert b"without vxgate" in sink.wait_for(2, 60)[1].data
        assert "without vxgate" not in open(prefix + "/logs/vxgate.log").read()
        # ... and wait until vxgate holds nothing (step 5's check, as the service user would)
        queue = subprocess.run([base + "/bin/vxgate", "queue"], cwd="/", capture_output=True, text=True,
                               env=dict(env, VXGATE_CONFIG=env["VXGATE_ETC"] + "/vxgate.ini"))
        assert queue.returncode == 0 and queue.stdout.strip() == "vxgate holds no message", queue
    finally:
        subprocess.run(["runuser", "-u", "vxgate", "--", prefix + "/.venv/bin/salmon", "stop"], cwd=prefix,
                       capture_output=True, env=dict(env, VXGATE_CONFIG=env["VXGATE_ETC"] + "/vxgate.ini"))
        shutil.rmtree(base, ignore_errors=True)
