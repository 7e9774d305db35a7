"""vxgate as administrators run it: ``salmon start``/``salmon stop``, kill -9 under load, bad files."""
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

import pytest

from support.mail import ROOT

SALMON = os.path.join(os.path.dirname(sys.executable), "salmon")
VXGATE = os.path.join(os.path.dirname(sys.executable), "vxgate")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("port %d never opened" % port)


@pytest.fixture
def app(tmp_path, sink):
    """An ini file and environment for a vxgate process relaying to the sink."""
    port = free_port()
    ini = tmp_path / "vxgate.ini"
    ini.write_text("[MailD]\nSmtpSocket = 127.0.0.1:%d\nSmtpSenderRelay = 127.0.0.1:%d\n"
                   "SmtpRelayRetryMin = 0.2s\nSmtpRelayRetryMax = 1s\nSmtpMaxConnections = 50\n"
                   "[Quarantine]\nSpoolDir = %s\nDatabasePath = %s\n"
                   % (port, sink.port, tmp_path / "spool", tmp_path / "q.db"))
    logconf = tmp_path / "logging.conf"
    logconf.write_text(open(os.path.join(ROOT, "config", "logging.conf")).read().replace(
        '"logs/vxgate.log"', repr(str(tmp_path / "vxgate.log"))))
    env = dict(os.environ, VXGATE_CONFIG=str(ini), VXGATE_LOGGING=str(logconf))
    return {"port": port, "env": env, "ini": ini, "log": tmp_path / "vxgate.log", "pid": tmp_path / "vxgate.pid"}


def message(n):
    return b"From: load@x.test\r\nTo: r@x.test\r\nSubject: load %d\r\nMessage-ID: <%d@load.test>\r\n\r\nbody %d\r\n" % (n, n, n)


def test_salmon_start_and_stop(app, sink):
    subprocess.run([SALMON, "start", "--pid", str(app["pid"])], cwd=ROOT, env=app["env"], check=True, timeout=30)
    try:
        wait_port(app["port"])
        with smtplib.SMTP("127.0.0.1", app["port"], timeout=10) as client:
            client.sendmail("a@x.test", ["b@x.test", "c@x.test"], message(1))
        assert sink.wait_for(1, 10)[0].data == message(1)
    finally:
        subprocess.run([SALMON, "stop", "--pid", str(app["pid"])], cwd=ROOT, env=app["env"], timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", app["port"]), timeout=1).close()
            time.sleep(0.1)
        except OSError:
            break
    else:
        raise AssertionError("vxgate still listening after salmon stop")
    deadline = time.time() + 15     # the listener closes first; the last line follows the clean-up
    while "vxgate stopped" not in app["log"].read_text() and time.time() < deadline:
        time.sleep(0.05)
    log = app["log"].read_text()
    assert "signal SIGHUP received" in log and "vxgate stopped" in log
    assert "received from=<a@x.test> to=<b@x.test>,<c@x.test>" in log


@pytest.mark.parametrize("reply_timeout", ["60s", "0.02s"])
def test_kill_9_under_load_loses_no_acknowledged_message(app, sink, reply_timeout):
    """With a short SmtpReplyTimeout most 250s are sent before relaying: the restart must finish them."""
    with open(app["ini"], "a") as ini:
        ini.write("[MailD]\nSmtpReplyTimeout = %s\n" % reply_timeout)
    sink.data_reply = lambda msg: (time.sleep(0.01), None)[1]    # keep messages in flight
    cmd = [SALMON, "start", "--no-daemon", "--force", "--pid", str(app["pid"])]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=app["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(app["port"])
    acked, lock, stop = set(), threading.Lock(), threading.Event()
    counter = iter(range(100000))

    def load():
        while not stop.is_set():
            with lock:
                n = next(counter)
            if n >= 400:
                return
            try:
                with smtplib.SMTP("127.0.0.1", app["port"], timeout=10) as client:
                    client.sendmail("load@x.test", ["r@x.test"], message(n))
                with lock:
                    acked.add(n)
            except (OSError, smtplib.SMTPException):
                pass     # not acknowledged: the sending MTA would retry it
    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(acked) < 150:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for thread in threads:
        thread.join()
    acked_at_kill = set(acked)
    delivered_at_kill = len(sink.messages)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=app["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(app["port"])
        deadline = time.time() + 30
        while time.time() < deadline:
            got = {int(m.data.split(b"load ")[1].split(b"\r\n")[0]) for m in sink.messages}
            if acked_at_kill <= got:
                break
            time.sleep(0.2)
        got = [int(m.data.split(b"load ")[1].split(b"\r\n")[0]) for m in sink.messages]
        missing = acked_at_kill - set(got)
        duplicates = len(got) - len(set(got))
        print("acknowledged %d, delivered before kill %d, after restart %d, duplicates %d"
              % (len(acked_at_kill), delivered_at_kill, len(got), duplicates))
        assert not missing, "acknowledged but never delivered: %s" % sorted(missing)
        assert duplicates <= 8 + 8, "duplicates beyond the in-flight window: %d" % duplicates
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize("text, expected", [
    ("[MailD]\nSmtpSocket = localhost:25\n", ":2: bad value 'localhost:25' for SmtpSocket"),
    ("[MailD]\nSmtpReplyTimeout = 11m\n", "below Postfix's 600 s"),
    ("[Root]\nUseVxcube = Yes\n", ":2: UseVxcube = Yes needs VxcubeApiAddress"),
    ("[MailD]\nSmtpMaxConnections = lots\n", ":2: bad value 'lots' for SmtpMaxConnections: expected a whole number"),
    ("[Mail]\n", ":1: unknown section [Mail]"),
    ("SmtpSocket = 1.2.3.4:25\n", ":1: parameter outside a section"),
    ("[MailD]\nSmtpHook = a\nSmtpHook = b\n", ":3: SmtpHook given twice (first at line 2)"),
    ("[Quarantine]\nSpoolDirectory = /x\n", ":2: unknown parameter 'SpoolDirectory'"),
    ("[MailD]\nSmtpIdleTimeout = 5 minutes\n", "expected a duration"),
])
def test_bad_configuration_stops_start_up_with_file_and_line(tmp_path, text, expected):
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    env = dict(os.environ, VXGATE_CONFIG=str(ini))
    check = subprocess.run([VXGATE, "check-config"], env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode == 2 and expected in check.stderr and str(ini) in check.stderr, check.stderr
    start = subprocess.run([SALMON, "start", "--no-daemon", "--pid", str(tmp_path / "x.pid")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=30)
    assert start.returncode != 0 and expected in start.stderr and str(ini) in start.stderr


def test_configuration_values(tmp_path):
    from salmon_app import config
    cfg = config.parse_text("[maild]\nsmtpsocket = /run/vxgate/smtp.sock\nSmtpRelayRetryMin = 1h30m\n"
                            "SmtpMaxMessageSize = 10mb ; ten\n[root]\nVxcubePlatforms = \"win7x64\", win10x64\n"
                            "VxcubePlatforms = winxp\nUseVxcube = on\nVxcubeApiAddress = https://vx.test/\n"
                            "VxcubeApiKey = \"k;ey\"\n", "t.ini")
    assert cfg.SmtpSocket.path == "/run/vxgate/smtp.sock"
    assert cfg.SmtpRelayRetryMin == 5400 and cfg.SmtpMaxMessageSize == 10 * 1024 * 1024
    assert cfg.VxcubePlatforms == ["win7x64", "win10x64", "winxp"] and cfg.UseVxcube
    assert cfg.VxcubeApiKey == "k;ey"
    assert config.parse_duration("30m2.5s") == 1802.5 and config.parse_socket("[::1]:10025").host == "::1"
    # the shipped sample parses and equals the built-in defaults
    sample = config.load(os.path.join(ROOT, "config", "vxgate.ini"))
    assert dict(sample.items()) == dict(config.Config(config.defaults()).items())


def test_readme_and_sample_document_every_parameter():
    from salmon_app import config
    readme = open(os.path.join(ROOT, "README.md")).read()
    sample = open(os.path.join(ROOT, "config", "vxgate.ini")).read()
    for param in config.SCHEMA:
        assert "| `%s` |" % param.name in readme, param.name
        assert "; %s = " % param.name in sample, param.name


def test_relay_to_itself_is_a_configuration_error():
    from salmon_app import config
    with pytest.raises(config.ConfigError, match="mail loop"):
        config.parse_text("[MailD]\nSmtpSocket = 127.0.0.1:10025\nSmtpSenderRelay = 127.0.0.1:10025\n", "x.ini")
