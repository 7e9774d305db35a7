"""Every command line of the README, run.

``readme_commands()`` extracts the command lines (``sh`` blocks, ``$ `` lines and inline code
that starts with a program); each one must be listed below: run here for real against a live
vxgate (``vxgate``/``salmon`` lines, with the README's placeholders filled in), checked against
``--help`` (synopses with ``[options]``), run by another test (named), or not runnable on a
test machine (with the reason). A new command line in the README fails
``test_every_readme_command_is_accounted_for`` until it is added here.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from support.mail import ROOT

BIN = os.path.dirname(sys.executable)
PROGRAMS = ("vxgate ", ".venv/bin/", "salmon ", "make ", "scripts/", "systemctl ", "postconf ", "journalctl ",
            "cd ", "git ", "grep ", "bash ")


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    found, block = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            block = None if block is not None else line[3:].strip()
            continue
        if block is not None:
            if block == "sh" or line.startswith("$ "):
                command = re.sub(r"\s+#.*$", "", line[2:] if line.startswith("$ ") else line).strip()
                if command:
                    found.append(command)
            continue
        found += [span for span in re.findall(r"`([^`]+)`", line) if span.startswith(PROGRAMS) and " " in span]
    return sorted(set(found))


# run for real, in this order (a line may come twice), against the ``app`` fixture's directory
RUN = [
    "vxgate check-config",
    ".venv/bin/vxgate check-config",
    "vxgate check-config -q",
    ".venv/bin/vxgate check-config -c /etc/vxgate/vxgate.ini",
    ".venv/bin/vxgate sample-config",
    "salmon start",
    ".venv/bin/salmon status",
    "vxgate doctor",
    ".venv/bin/vxgate doctor",
    "vxgate reload",
    ".venv/bin/vxgate reload",
    "vxgate quarantine list",
    "vxgate quarantine show C88AF3A0F031EC1C",
    "vxgate queue",
    "grep 3D4A9076761D5EFE logs/vxgate.log",
    ".venv/bin/vxgate repack-password 6A1F0C2D9E8B7A65-1a2b3c4d",
    "vxgate repack-password <queue id>",
    ".venv/bin/salmon stop && .venv/bin/salmon start",
    ".venv/bin/salmon stop",
    ".venv/bin/salmon start",
    "salmon stop",
    "cd /opt/vxgate",
    "salmon start",
    "cd /opt/vxgate && .venv/bin/salmon stop",
    "salmon start --no-daemon",
    ".venv/bin/salmon start --no-daemon",
    "vxgate vxcube-sim --listen 127.0.0.1:8088 --key KEY --analysis-time 2s",
    "salmon start",
    "salmon stop --force",
]
# a synopsis or a mention: the sub-command exists and offers every option named
HELP = [
    "vxgate quarantine show",
    "vxgate quarantine list [--state S] [--verdict V] [--mode M] [--sender T] [--recipient T] [--subject T] "
    "[--since 2d] [--until DATE] [--released\\|--not-released] [--sort created\\|size\\|state\\|sender] [-r] [-n N] [--json]",
    "vxgate quarantine show ID [--json]",
    "vxgate quarantine release ID... [--to ADDR] [--force] [--dry-run]",
    "vxgate quarantine export ID [-o FILE]",
    "vxgate quarantine delete ID... [--force]",
    "vxgate quarantine purge --older-than 30d [--state S] [--dry-run]",
    "vxgate quarantine check [--repair]",
    "vxgate quarantine stats [--since 7d]",
    "vxgate queue [--json]",
    "vxgate queue flush [ID...]",
    "vxgate queue hold ID...",
    "vxgate queue release-hold ID...",
    "vxgate db",
    "vxgate db upgrade [-c FILE]",
    "vxgate db status [-c FILE]",
    "vxgate db copy --from URL --to URL [--spool DIR] [--node NAME] [--batch N] [--upgrade]",
]
ELSEWHERE = {
    "vxgate db status": "tests/test_processes.py::test_two_processes_take_mail_on_one_socket_and_deliver_each_message_once",
    "make demo": "tests/test_readme_commands.py::test_make_demo",
    "scripts/install-vm.sh --postfix --start --no-systemd": "tests/test_install.py::test_install_on_a_vm_then_turn_off",
    "bash .ci/install-postfix.sh": ".ci/run (CI installs Postfix with it before `make test`)",
    "make test": ".ci/run (CI runs the suite with it; a test cannot run its own suite)",
    "make bench": "bench/README.md (needs Postfix's smtp-source/smtp-sink; minutes of CPU on a shared box)",
    "vxgate quarantine export": "tests/test_quarantine.py::test_export_is_byte_identical",
    "vxgate web": "tests/web/test_web_cli.py::test_serves_https_with_a_secure_cookie_and_stops_on_sigterm",
    "vxgate web add-user alice": "tests/web/test_web_cli.py::test_add_user_reads_the_password_from_stdin_never_argv",
    "vxgate web users": "tests/web/test_web_cli.py::test_add_user_reads_the_password_from_stdin_never_argv",
    "vxgate web remove-user alice": "tests/web/test_web_cli.py::test_add_user_reads_the_password_from_stdin_never_argv",
    "vxgate db upgrade": "tests/test_db_command.py (against a private PostgreSQL cluster)",
    "vxgate db copy --from sqlite:///var/lib/vxgate/quarantine.db --to postgresql://vxgate:secret@db.example.com/vxgate":
        "tests/test_db_command.py (the same command with the test's own paths and cluster)",
}
NOT_HERE = {
    "git clone <this repository> /root/vxgate && cd /root/vxgate": "needs the repository's public address",
    "cd /root/vxgate && git pull": "needs the repository's public address",
    "scripts/install-vm.sh --postfix --start": "needs systemd as PID 1 (see README: systemd in CI)",
    "scripts/install-vm.sh": "installs into /opt and /etc of the machine (the --no-systemd run is tested)",
    "postconf -e 'content_filter =' && postfix reload": "run by tests/test_install.py as separate commands",
    "journalctl -u vxgate": "needs systemd as PID 1",
    "journalctl -u vxgate | grep 'from=<'": "needs systemd as PID 1",
    "journalctl -u vxgate-web": "needs systemd as PID 1",
    "grep QUEUEID": "a fragment in prose; `grep 3D4A9076761D5EFE logs/vxgate.log` is run",
    "vxgate started (pid N): listening on …": "output of `salmon start` quoted in the text, not a command",
}
SYSTEMCTL = "needs systemd as PID 1 (see README: systemd in CI); the unit is checked by systemd-analyze verify"


def test_every_readme_command_is_accounted_for():
    listed = set(RUN) | set(HELP) | set(ELSEWHERE) | set(NOT_HERE)
    unlisted = [c for c in readme_commands() if c not in listed and "systemctl " not in c]
    assert not unlisted, "README command lines no test runs: %s" % unlisted
    stale = (set(RUN) | set(HELP) | set(ELSEWHERE) | set(NOT_HERE)) - set(readme_commands())
    assert not stale, "listed here but no longer in the README: %s" % sorted(stale)
    assert all("systemctl " not in c or c.startswith(("systemctl ", "vxgate check-config && systemctl"))
               for c in readme_commands()), SYSTEMCTL


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, up=True, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise AssertionError("port %d never %s" % (port, "opened" if up else "closed"))


@pytest.fixture
def app(tmp_path, sink):
    """An application directory like /opt/vxgate: .venv, config/hooks, its own ini; logs/ appears."""
    home = tmp_path / "opt-vxgate"
    (home / "config").mkdir(parents=True)
    os.symlink(os.path.dirname(BIN), home / ".venv")
    shutil.copytree(os.path.join(ROOT, "config", "hooks"), home / "config" / "hooks")
    port = free_port()
    ini = home / "vxgate.ini"
    ini.write_text("[MailD]\nSmtpSocket = 127.0.0.1:%d\nSmtpSenderRelay = 127.0.0.1:%d\n"
                   "RepackPassword = HMAC(readme-secret)\n" % (port, sink.port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VXGATE_")}
    env.update(VXGATE_CONFIG=str(ini), VXGATE_ALLOW_ROOT="1", PATH=BIN + os.pathsep + os.environ["PATH"])
    yield {"home": home, "port": port, "ini": ini, "env": env}
    if (home / "run" / "smtp.pid").exists():
        subprocess.run([os.path.join(BIN, "salmon"), "stop", "--force"], cwd=home, env=env, capture_output=True)


def test_vxgate_and_salmon_command_lines_run(app, sink):
    home, port = app["home"], app["port"]
    queue_id = None

    def run(line):
        nonlocal queue_id
        command = line.replace("/etc/vxgate/vxgate.ini", str(app["ini"])).replace("/opt/vxgate", str(home))
        if queue_id:
            command = re.sub(r"C88AF3A0F031EC1C|3D4A9076761D5EFE|<queue id>", queue_id, command)
        if "--no-daemon" in command or "vxcube-sim" in command:
            return run_foreground(command)
        result = subprocess.run(command, shell=True, cwd=home, env=app["env"], capture_output=True, text=True,
                                timeout=150)
        assert result.returncode == 0, (line, result.stdout, result.stderr)
        if command.endswith("salmon start"):
            wait_port(port)
            if queue_id is None:
                import smtplib
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    client.sendmail("a@x.test", ["b@x.test"], b"Subject: readme\r\n\r\nhi\r\n")
                sink.wait_for(1, 30)
                listing = subprocess.run([os.path.join(BIN, "vxgate"), "quarantine", "list", "--json"], cwd=home,
                                         env=app["env"], capture_output=True, text=True)
                queue_id = __import__("json").loads(listing.stdout)["messages"][0]["id"]
        if command.endswith("salmon stop"):
            wait_port(port, up=False)
        return result

    def run_foreground(command):
        if "vxcube-sim" in command:
            sim_port = free_port()
            command = command.replace("127.0.0.1:8088", "127.0.0.1:%d" % sim_port)
        proc = subprocess.Popen(command, shell=True, cwd=home, env=app["env"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            if "vxcube-sim" in command:
                assert proc.stdout.readline().strip() == "http://127.0.0.1:%d" % sim_port
                import requests
                licence = requests.get("http://127.0.0.1:%d/api-2.0/license" % sim_port, timeout=10,
                                       headers={"Authorization": "api-key KEY"})
                assert licence.status_code == 200, licence.text     # the key given on the command line
            else:
                wait_port(port)
                stop = subprocess.run([os.path.join(BIN, "salmon"), "stop"], cwd=home, env=app["env"],
                                      capture_output=True, text=True, timeout=150)
                assert stop.returncode == 0, stop.stderr
                assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait(30)

    outputs = {line: run(line) for line in RUN}
    assert "OK" in outputs["vxgate check-config -q"].stdout
    assert "vxgate is running" in outputs[".venv/bin/salmon status"].stdout
    assert "vxgate is listening" in outputs["vxgate doctor"].stdout
    assert "reloaded" in outputs["vxgate reload"].stdout
    assert queue_id in outputs["vxgate quarantine list"].stdout
    assert re.fullmatch(r"[0-9a-f]{16}\n", outputs[".venv/bin/vxgate repack-password 6A1F0C2D9E8B7A65-1a2b3c4d"].stdout)


@pytest.mark.parametrize("line", HELP)
def test_synopses_name_real_options(line):
    words = line.split()
    sub = [w for w in words[1:3] if re.fullmatch(r"[a-z-]+", w)]
    result = subprocess.run([os.path.join(BIN, "vxgate")] + sub + ["--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line):
        assert option in result.stdout, (option, result.stdout)


def test_make_demo():
    """`make demo` as the README says; its ports are the defaults, so it waits its turn if they are in use."""
    for port in (10025, 10026):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip("127.0.0.1:%d is in use (another vxgate or demo runs on this machine)" % port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VXGATE_")}
    result = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 of 5 messages delivered, 1 deferred" in result.stdout
