"""A gateway started in the test process: its configuration and a client helper.

``make_config`` builds a configuration on loopback with the test's own spool and database,
relaying to a sink; ``Running`` wraps a started gateway with ``.port`` and ``.send(...)``;
``send_at_once`` sends from many threads at the same moment.
The ``vxgate`` fixture of conftest.py uses both; tests that start gateways their own way
import them from here (a test folder's conftest is not importable by name from another).
"""
import smtplib
import threading

from salmon_app import config as vxconfig
from salmon_app.config import SocketAddr


def make_config(tmp_path, sink_port, **params):
    values = dict(
        SmtpSocket=SocketAddr("127.0.0.1", 0), SmtpSenderRelay=SocketAddr("127.0.0.1", sink_port),
        SpoolDir=str(tmp_path / "spool"), DatabasePath=str(tmp_path / "quarantine.db"),
        SmtpHostname="vxgate.test", SmtpReplyTimeout=10.0, SmtpRelayRetryMin=0.2,
        SmtpRelayRetryMax=0.5, MetricsSocket=None)
    values.update(params)
    return vxconfig.Config(vxconfig.defaults()).replace(**values)


class Running:
    """A gateway running in this process, with a client helper."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.port = gateway.servers[0].port

    def send(self, mail_from, rcpt_to, data, **kw):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            return client.sendmail(mail_from, rcpt_to, data, **kw)

    def client(self):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30)

    def stop(self):
        if self.gateway:
            self.gateway.shut_down()
            self.gateway = None


def send_at_once(send, count):
    """Run ``send(n)`` for n in range(count), each in its own thread, all at once; returns the
    [(n, exception)] of the calls that raised."""
    errors = []

    def one(n):
        try:
            send(n)
        except Exception as exc:
            errors.append((n, exc))
    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
