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
    assert "signal SIGTERM received" in log and "vxgate stopped" in log
    assert "from=<a@x.test> to=<b@x.test>,<c@x.test> size=" in log and "client=127.0.0.1" in log


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
    ("[Root]\nUseVxcube = Yes\nVxcubeApiAddress = ftp://x\nVxcubeApiKey = k\n",
     ":3: bad value for VxcubeApiAddress: 'ftp://x'; expected host, host:port or https://host[:port]/"),
    ("[MailD]\nSmtpAdminAddress = not an address\n", ":2: bad value for SmtpAdminAddress: 'not an address' is not"),
    ("[MailD]\nBccMonitorAddresses = monitor@bcc.test, bcc.test\n", ":2: bad value for BccMonitorAddresses: 'bcc.test'"),
    ("[Root]\nVxcubeFileTypes = exe, foo\n", ":2: bad value for VxcubeFileTypes: unknown file type 'foo'"),
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


# ---------------------------------------------------------------- operating the service
PRIVATE = 0o077     # no bit for group or others


@pytest.fixture
def service(sink):
    """An application directory like /opt/vxgate (config/, logs/, run/) whose state lives
    in directories that do not exist yet; ``run(*args)`` runs salmon/vxgate there under umask 0.
    (Under /tmp, not pytest's private tmp_path, so that a service user can reach it.)"""
    import pathlib
    import shutil
    import tempfile
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="vxgate-op-"))
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "app"
    (home / "config").mkdir(parents=True)
    port = free_port()
    ini = home / "vxgate.ini"
    ini.write_text("[Root]\nPidFile = %s\n[MailD]\nSmtpSocket = 127.0.0.1:%d\nSmtpSenderRelay = 127.0.0.1:%d\n"
                   "SmtpHook = %s\nSmtpRelayRetryMin = 0.2s\n"
                   "[Quarantine]\nSpoolDir = %s\nDatabasePath = %s\nKeepDeliveredMessages = Yes\n"
                   % (tmp_path / "runtime" / "vxgate.pid", port, sink.port,
                      os.path.join(ROOT, "config", "hooks", "default.lua"),
                      tmp_path / "state" / "new" / "spool", tmp_path / "state" / "db" / "quarantine.db"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VXGATE_")}
    env.update(VXGATE_CONFIG=str(ini), VXGATE_ALLOW_ROOT="1")

    def run(*args, umask=0, **kw):
        kw.setdefault("capture_output", True)
        return subprocess.run(list(args), cwd=home, env=kw.pop("env", env), text=True, timeout=150,
                              preexec_fn=lambda: os.umask(umask), **kw)
    yield {"home": home, "port": port, "ini": ini, "env": env, "run": run, "root": tmp_path,
           "pid": tmp_path / "runtime" / "vxgate.pid"}
    if (tmp_path / "runtime" / "vxgate.pid").exists():
        subprocess.run([SALMON, "stop", "--force"], cwd=home, env=env, capture_output=True, timeout=60)
    shutil.rmtree(tmp_path, ignore_errors=True)


def send(port, n):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("a@x.test", ["b@x.test"], message(n))


def test_files_vxgate_makes_are_private_under_umask_0(service, sink):
    """logs/vxgate.log was 0666 and missing parents of SpoolDir/DatabasePath 0777 (daemonizing sets umask 0)."""
    before = {p for p in service["root"].rglob("*")}
    started = service["run"](SALMON, "start")
    assert started.returncode == 0, started.stderr
    wait_port(service["port"])
    send(service["port"], 1)
    sink.wait_for(1, 30)
    listing = service["run"](VXGATE, "quarantine", "list", "--json")
    queue_id = __import__("json").loads(listing.stdout)["messages"][0]["id"]
    exported = service["run"](VXGATE, "quarantine", "export", queue_id, "-o", str(service["root"] / "out.eml"))
    assert exported.returncode == 0, exported.stderr
    made = {p: os.stat(p).st_mode for p in service["root"].rglob("*") if p not in before}   # while it runs
    stopped = service["run"](SALMON, "stop")
    assert stopped.returncode == 0, stopped.stderr
    made.update({p: os.stat(p).st_mode for p in service["root"].rglob("*") if p not in before})
    names = {str(p.relative_to(service["root"])) for p in made}
    for expected in ("app/logs/vxgate.log", "app/logs/salmon.err", "runtime/vxgate.pid", "state/new",
                     "state/new/spool", "state/db", "state/db/quarantine.db", "state/db/quarantine.db-wal",
                     "out.eml"):
        assert expected in names, sorted(names)
    assert any(name.endswith(".eml") and "spool" in name for name in names)
    public = {str(p): oct(mode & 0o777) for p, mode in made.items() if mode & PRIVATE}
    assert not public, public


def test_kill_9_leaves_a_stale_pid_file_that_start_and_doctor_explain(service, sink):
    assert service["run"](SALMON, "start").returncode == 0
    wait_port(service["port"])
    pid = int(service["pid"].read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 15
    while os.path.exists("/proc/%d" % pid) and time.time() < deadline:
        time.sleep(0.05)
    doctor = service["run"](VXGATE, "doctor")
    assert "WARN PidFile" in doctor.stdout and "process %d is gone" % pid in doctor.stdout, doctor.stdout
    assert "kill -9" in doctor.stdout and "fix: salmon start" in doctor.stdout
    restarted = service["run"](SALMON, "start")
    assert restarted.returncode == 0, restarted.stderr
    assert "stale pid file %s: process %d is gone" % (service["pid"], pid) in restarted.stderr
    wait_port(service["port"])
    send(service["port"], 2)
    assert sink.wait_for(1, 30)[0].data == message(2)
    assert "ok   PidFile" in service["run"](VXGATE, "doctor").stdout
    again = service["run"](SALMON, "start")       # a live vxgate is not stale
    assert again.returncode == 1 and "vxgate is running" in again.stderr
    stopped = service["run"](SALMON, "stop")
    assert stopped.returncode == 0 and "vxgate stopped" in stopped.stderr, stopped.stderr
    assert not service["pid"].exists()
    err = (service["home"] / "logs" / "salmon.err").read_text()
    assert "Traceback" not in err and "NotLocked" not in err, err
    assert "signal SIGTERM received" in (service["home"] / "logs" / "vxgate.log").read_text()


def test_foreground_service_writes_the_pid_file_control_commands_use(service):
    """systemd runs `salmon start --no-daemon`, which wrote no pid file: reload-hooks could not find it."""
    proc = subprocess.Popen([SALMON, "start", "--no-daemon"], cwd=service["home"], env=service["env"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(service["port"])
        assert int(service["pid"].read_text()) == proc.pid
        assert os.stat(service["pid"]).st_mode & 0o777 == 0o600
        reload = service["run"](VXGATE, "reload-hooks")
        assert reload.returncode == 0 and "pid %d" % proc.pid in reload.stdout, reload.stderr
        log = service["home"] / "logs" / "vxgate.log"
        assert "signal SIGHUP received: reloading the configuration" in log.read_text()
        stopped = service["run"](SALMON, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(30) == 0
        assert not service["pid"].exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_systemd_notify_protocol_over_a_real_datagram_socket(service, tmp_path):
    """Type=notify: READY=1 only once the socket listens, WATCHDOG=1 pings, STOPPING=1 at SIGTERM."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(60)
    env = dict(service["env"], NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000")
    proc = subprocess.Popen([SALMON, "start", "--no-daemon"], cwd=service["home"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = listener.recv(4096).decode()
        assert first.startswith("MAINPID=%d\nSTATUS=starting" % proc.pid), first
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready.split("\n") and "MAINPID=%d" % proc.pid in ready
        socket.create_connection(("127.0.0.1", service["port"]), timeout=5).close()   # listening already
        assert listener.recv(4096) == b"WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        while True:
            datagram = listener.recv(4096).decode()
            if datagram != "WATCHDOG=1":
                break
        assert datagram.startswith("STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it checks what vxgate does when started as root")
def test_root_is_refused_unless_told(service):
    env = {k: v for k, v in service["env"].items() if k != "VXGATE_ALLOW_ROOT"}
    refused = service["run"](SALMON, "start", env=env)
    assert refused.returncode == 1 and "refusing to run as root" in refused.stderr and "User" in refused.stderr
    assert not (service["root"] / "state").exists() and not service["pid"].exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it checks what vxgate does when started as root")
def test_root_switches_to_the_configured_user(service):
    """User = nobody: vxgate switches to it before it makes any file (the process and its files are nobody's)."""
    probe = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c", "import json, salmon_app"],
                           cwd="/", capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run this interpreter (%s: a per-user Python such as pyenv under /root)"
                    % sys.executable)
    env = {k: v for k, v in service["env"].items() if k != "VXGATE_ALLOW_ROOT"}
    with open(service["ini"], "a") as ini:
        ini.write("[Root]\nUser = nobody\n")
    import pwd
    nobody = pwd.getpwnam("nobody")
    for path in (service["root"], service["home"]):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(path, 0o755)
    started = service["run"](SALMON, "start", env=env)
    assert started.returncode == 0, started.stderr
    wait_port(service["port"])
    pid = int(service["pid"].read_text())
    uid_line = next(l for l in open("/proc/%d/status" % pid) if l.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
    assert os.stat(service["root"] / "state" / "db" / "quarantine.db").st_uid == nobody.pw_uid
    assert service["run"](SALMON, "stop", env=env).returncode == 0


def test_version_and_config_option_only_where_a_file_is_read():
    version = subprocess.run([VXGATE, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("vxgate 0.") and "salmon-mail" in version.stdout
    for command in ("sample-config", "demo"):
        result = subprocess.run([VXGATE, command, "-c", "x.ini"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "unrecognized arguments: -c" in result.stderr
        assert "--config" not in subprocess.run([VXGATE, command, "--help"], capture_output=True, text=True).stdout


def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` (Debian's systemd package has it even where systemd is not PID 1)."""
    import shutil
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = open(os.path.join(ROOT, "config", "systemd", "vxgate.service")).read()
    assert "Type=notify" in text and "StartLimitBurst=" in text and "WatchdogSec=" in text
    for directive in ("StateDirectory=vxgate", "LogsDirectory=vxgate", "RuntimeDirectory=vxgate"):
        assert directive in text
    for name in ("vxgate.service", "vxgate-web.service"):
        text = open(os.path.join(ROOT, "config", "systemd", name)).read()
        unit = tmp_path / name
        unit.write_text(text.replace("/opt/vxgate", ROOT))     # the commands it names must exist
        result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and not result.stderr.strip(), (name, result.stderr)


def test_check_config_dry_runs_the_hook_on_sample_messages(tmp_path):
    """A hook that loads but answers `acept` tempfails every message: check-config said OK."""
    ini = tmp_path / "vxgate.ini"
    ini.write_text("[MailD]\nSmtpHook = %s\n" % os.path.join(ROOT, "config", "hooks", "default.lua"))
    good = subprocess.run([VXGATE, "check-config", "-c", str(ini)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    decisions = good.stdout.split("its decisions for sample messages:\n")[1].splitlines()[:-1]
    assert good.stdout.endswith(": OK\n")
    assert [line.split()[0] for line in decisions] == ["no", "clean", "suspicious", "dangerous", "unchecked"]
    assert "repack" in decisions[3] and "Subject" in decisions[2] and decisions[0].split()[-1] == "accept"
    ini.write_text("[MailD]\nSmtpHook = function smtp_hook(ctx) return {action = \"acept\"} end\n")
    for args in (["check-config"], ["check-config", "-q"]):
        bad = subprocess.run([VXGATE] + args + ["-c", str(ini)], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and bad.stderr.count("FAILED: unknown action 'acept'") == 5, bad.stderr
        assert "Traceback" not in bad.stderr and "OK" not in bad.stdout


def test_upgrade_in_place_finishes_every_message_in_flight(service, sink):
    """README "Upgrade in place": stop with mail in flight, replace the application directory, start."""
    sink.data_reply = (451, "4.3.0 next hop busy")          # vxgate answers 250 and keeps the mail
    assert service["run"](SALMON, "start").returncode == 0
    wait_port(service["port"])
    for n in range(5):
        send(service["port"], 100 + n)
    stopped = service["run"](SALMON, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert sink.messages == [] and len(sink.attempts) >= 5
    in_flight = service["run"](VXGATE, "quarantine", "list", "--state", "in-flight", "--json")
    assert __import__("json").loads(in_flight.stdout)["total"] == 5, in_flight.stdout
    # the new code: /opt/vxgate replaced as install-vm.sh does; the state directories stay
    old = service["home"].with_name("app.old")
    os.rename(service["home"], old)
    (service["home"] / "config").mkdir(parents=True)
    os.rename(old / "vxgate.ini", service["ini"])
    sink.data_reply = None
    assert service["run"](SALMON, "start").returncode == 0
    got = sink.wait_for(5, 120)
    assert sorted(m.data for m in got) == sorted(message(100 + n) for n in range(5))
    deadline = time.time() + 60
    while time.time() < deadline:
        listing = __import__("json").loads(service["run"](VXGATE, "quarantine", "list", "--json").stdout)
        if [m["state"] for m in listing["messages"]] == ["delivered"] * 5:
            break
        time.sleep(0.2)
    assert [m["state"] for m in listing["messages"]] == ["delivered"] * 5
    assert service["run"](SALMON, "stop").returncode == 0


def test_start_waits_for_ready_and_says_why_it_failed(service, sink):
    """`salmon start` returned 0 at once and a failure (a port in use) was only in logs/salmon.err."""
    started = service["run"](SALMON, "start")
    assert started.returncode == 0, started.stderr
    assert "vxgate started (pid %s): listening on 127.0.0.1:%d" % (service["pid"].read_text().strip(),
                                                                  service["port"]) in started.stderr
    # a second instance with its own pid file: on the same state it stops before recovery touches it,
    # on its own state at the port in use
    other = dict(service["env"], VXGATE_CONFIG=str(service["home"] / "second.ini"))
    text = service["ini"].read_text().replace(str(service["pid"]), str(service["pid"]) + ".second")
    for ini_text, expected in ((text, "start-up failed: another vxgate (pid %s) uses this spool and database"
                                % service["pid"].read_text().strip()),
                               (text.replace("/state/", "/state2/"), "start-up failed: [Errno 98] Address already in use")):
        (service["home"] / "second.ini").write_text(ini_text)
        second = service["run"](SALMON, "start", env=other)
        assert second.returncode == 1 and "stopped during start-up: " + expected in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and not os.path.exists(str(service["pid"]) + ".second")
    send(service["port"], 7)                  # the first one never noticed
    assert sink.wait_for(1, 30)[0].data == message(7)
    assert service["run"](SALMON, "stop").returncode == 0
