"""The ``vxgate web`` command as an administrator runs it: users from a prompt or stdin, and the server.

``add-user`` never takes the password as an argument: it reads standard input here (a pipe),
writes argon2 hashes to a 0600 file and refuses weak passwords and bad names with one line.
``vxgate web`` serves the console in its own process over HTTPS (WebTlsCert/WebTlsKey, a
certificate made with openssl), sets a Secure session cookie, and stops cleanly on SIGTERM.
"""
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import requests

from salmon_app import config as vxconfig
from salmon_app.log import config_secrets
from support.mail import ROOT

BIN = os.path.dirname(sys.executable)


def vxgate(*args, stdin="", config=None, timeout=60):
    proc = subprocess.run([os.path.join(BIN, "vxgate"), *args] + (["-c", str(config)] if config else []),
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ini(tmp_path):
    path = tmp_path / "vxgate.ini"
    path.write_text("[Quarantine]\nDatabasePath = %s\nSpoolDir = %s\nWebSocket = 127.0.0.1:%d\n"
                    "WebSecret = Plain(session-key-for-tests)\n"
                    % (tmp_path / "quarantine.db", tmp_path / "spool", free_port()))
    return path


def test_add_user_reads_the_password_from_stdin_never_argv(ini, tmp_path):
    done = vxgate("web", "add-user", "alice", stdin="a long enough password\n", config=ini)
    assert done.returncode == 0, done.stderr
    users = tmp_path / "web-users"                     # beside the configuration file
    assert "added alice" in done.stdout and str(users) in done.stdout
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    text = users.read_text()
    assert "alice:$argon2id$" in text and "long enough" not in text
    again = vxgate("web", "add-user", "alice", stdin="another long password\n", config=ini)
    assert "changed the password of alice" in again.stdout and users.read_text() != text
    assert vxgate("web", "users", config=ini).stdout.split() == ["alice"]
    short = vxgate("web", "add-user", "bob", stdin="short\n", config=ini)
    assert short.returncode == 1 and "too short" in short.stderr
    bad = vxgate("web", "add-user", "bob smith", stdin="a long enough password\n", config=ini)
    assert bad.returncode == 2 and "bad user name" in bad.stderr
    empty = vxgate("web", "add-user", "bob", stdin="", config=ini)
    assert empty.returncode == 1 and "no password on standard input" in empty.stderr
    assert vxgate("web", "remove-user", "alice", config=ini).returncode == 0
    gone = vxgate("web", "remove-user", "alice", config=ini)
    assert gone.returncode == 1 and "no user 'alice'" in gone.stderr


def test_web_socket_empty_means_off(tmp_path):
    path = tmp_path / "off.ini"
    path.write_text("[Quarantine]\nWebSocket =\n")
    off = vxgate("web", config=path)
    assert off.returncode == 2 and "WebSocket is empty" in off.stderr


def test_config_checks_and_secret_redaction(tmp_path):
    def load(text):
        return vxconfig.parse_text("[Quarantine]\n" + text, "x.ini")
    with pytest.raises(vxconfig.ConfigError, match="needs WebSecret"):
        load("QuarantineDigest = Daily\nWebBaseUrl = https://gw.example/\n")
    with pytest.raises(vxconfig.ConfigError, match="WebTlsCert and WebTlsKey go together"):
        load("WebTlsCert = /etc/ssl/cert.pem\n")
    with pytest.raises(vxconfig.ConfigError, match="bad RecipientRelease"):
        load("RecipientRelease = dangerous:maybe\n")
    with pytest.raises(vxconfig.ConfigError, match="WebSocket must be IP:port"):
        load("WebSocket = /run/vxgate/web.sock\n")
    config = load("QuarantineDigest = Hourly\nWebSecret = s3cr3t-digest-key\nWebBaseUrl = https://gw.example/\n"
                  "RecipientRelease = suspicious:release, dangerous:none\n")
    assert vxconfig.recipient_release(config)["dangerous"] == "none"
    assert "s3cr3t-digest-key" in config_secrets(config)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_serves_https_with_a_secure_cookie_and_stops_on_sigterm(ini, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    ini.write_text(ini.read_text().replace("WebSocket = ", "; ") + "WebSocket = 127.0.0.1:%d\nWebTlsCert = %s\nWebTlsKey = %s\n"
                   "[Root]\nLogTarget = Stderr\n" % (port, cert, key))
    assert vxgate("db", "upgrade", config=ini).returncode == 0        # the daemon's database, as it makes it
    assert vxgate("web", "add-user", "alice", stdin="a long enough password\n", config=ini).returncode == 0
    server = subprocess.Popen([os.path.join(BIN, "vxgate"), "web", "-c", str(ini)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                page = requests.get("https://127.0.0.1:%d/login" % port, verify=str(cert), timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read() if server.poll() else "slow"
                time.sleep(0.1)
        assert page.status_code == 200 and "Log in" in page.text
        assert "Secure" in page.headers["Set-Cookie"] and "HttpOnly" in page.headers["Set-Cookie"]
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
        # log in as a browser does over HTTPS (the same-origin Referer that Flask-WTF's strict check wants)
        session = requests.Session()
        login = "https://127.0.0.1:%d/login" % port
        token = re.search(r'name="csrf_token" value="([^"]+)"', session.get(login, verify=str(cert)).text).group(1)
        form = {"username": "alice", "password": "a long enough password", "csrf_token": token}
        assert session.post(login, data=form, verify=str(cert), allow_redirects=False).status_code == 400   # no Referer
        done = session.post(login, data=form, verify=str(cert), allow_redirects=False, headers={"Referer": login})
        assert done.status_code == 302 and done.headers["Location"] == "/"
        assert "Log out" in session.get("https://127.0.0.1:%d/" % port, verify=str(cert)).text
        with pytest.raises(requests.exceptions.SSLError):
            requests.get("https://127.0.0.1:%d/login" % port, timeout=5)   # not a certificate the system trusts
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "web console listening on https://127.0.0.1:%d/" % port in err and "web console stopped" in err
    assert "session-key-for-tests" not in err
