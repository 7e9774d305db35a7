"""A vxgate daemon run as administrators run it: ``salmon start --no-daemon`` with its own
configuration file, spool, log and pid file, in a process of its own.

``Node`` is one such daemon (the ``nodes`` fixture of conftest.py makes them and stops them at
the end of the test); ``ini_text`` writes the configuration file from make_config-style values.
"""
import os
import signal
import smtplib
import socket
import subprocess
import sys

from support import pgcluster
from support.mail import ROOT
from support.waiting import wait_until

from salmon_app import config as vxconfig
from salmon_app.config import SocketAddr

SALMON = os.path.join(os.path.dirname(sys.executable), "salmon")
VXGATE = os.path.join(os.path.dirname(sys.executable), "vxgate")
_SECTION = {p.name: p for p in vxconfig.SCHEMA}


def ini_text(params):
    """A configuration file setting ``params`` (values as make_config takes them)."""
    sections = {}
    for name, value in params.items():
        param = _SECTION[name]
        sections.setdefault(param.section, []).append("%s = %s" % (name, vxconfig.format_value(param, value)))
    return "".join("[%s]\n%s\n" % (section, "\n".join(lines)) for section, lines in sections.items())


class Node:
    """One vxgate daemon: its configuration file, spool, log and process."""

    def __init__(self, home, name, url, relay_port, **params):
        # url: DatabaseUrl (PostgreSQL, or sqlite:///...); None: DatabasePath in ``home``
        self.name, self.home = name, home
        home.mkdir(parents=True, exist_ok=True)
        self.port = pgcluster.free_port()
        self.ini = home / "vxgate.ini"
        self.log = home / "vxgate.log"
        self.pid = home / "vxgate.pid"
        values = dict(NodeName=name, SmtpSocket=SocketAddr("127.0.0.1", self.port),
                      SmtpSenderRelay=SocketAddr("127.0.0.1", relay_port), SmtpHostname=name + ".test",
                      SmtpRelayRetryMin=0.2, SmtpRelayRetryMax=1.0, SmtpMaxConnections=120,
                      SpoolDir=str(home / "spool"), PidFile=str(self.pid),
                      LogTarget="File", LogFile=str(self.log), MetricsSocket=None)
        values.update({"DatabaseUrl": url} if url else {"DatabasePath": str(home / "quarantine.db")})
        values.update(params)
        self.ini.write_text(ini_text(values))
        self.env = dict(os.environ, VXGATE_CONFIG=str(self.ini))
        self.env.pop("VXGATE_LOGGING", None)     # the node's own LogFile, as in production
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([SALMON, "start", "--no-daemon", "--force", "--pid", str(self.pid)],
                                     cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening():
            assert self.proc.poll() is None, "%s exited: %s" % (self.name, self.tail())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, 30, "%s to listen" % self.name)
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self):
        return self.log.read_text()[-3000:] if self.log.exists() else "(no log)"

    def send(self, data, rcpt="bob@x.test", sender="alice@x.test"):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            return client.sendmail(sender, [rcpt], data)

    def vxgate(self, *args, check=0):
        proc = subprocess.run([VXGATE, *args, "-c", str(self.ini)], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == check and "Traceback" not in proc.stderr, (args, proc.stdout, proc.stderr)
        return proc.stdout
