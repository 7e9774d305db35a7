"""Fixtures that start real servers (aiosmtpd's habit): a next-hop sink and vxgate itself.

``vxgate(**params)`` starts a gateway in this process on a free loopback port, with its own
spool and SQLite file under the test's tmp_path, relaying to the ``sink`` fixture; it hands
back the running gateway with ``.port`` and ``.send(...)``.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# CI runs the suite as root in a container; vxgate refuses root unless told (salmon start --allow-root)
os.environ.setdefault("VXGATE_ALLOW_ROOT", "1")

from support.mail import VXCUBE_KEY  # noqa: E402
from support.sink import SinkServer  # noqa: E402

from support import daemon  # noqa: E402
from support.gateway import Running, make_config  # noqa: E402



def pytest_configure(config):
    config.addinivalue_line("markers", "postfix: needs a real Postfix installation")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "both_engines: run once on SQLite and once on PostgreSQL")


def pytest_generate_tests(metafunc):
    """Tests marked ``both_engines`` that use the ``database`` fixture run on each engine."""
    if "database" in metafunc.fixturenames:
        engines = ["sqlite", "postgresql"] if metafunc.definition.get_closest_marker("both_engines") else ["sqlite"]
        metafunc.parametrize("database", engines, indirect=True)


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster for the whole run (tests/support/pgcluster.py)."""
    from support import pgcluster
    reason = pgcluster.skip_reason()
    if reason:
        if os.environ.get(pgcluster.REQUIRED):
            pytest.fail("PostgreSQL is required here (%s is set) but: %s" % (pgcluster.REQUIRED, reason))
        pytest.skip(reason)
    cluster = pgcluster.Cluster().init().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def database(request, tmp_path):
    """Where a test's gateway keeps its records: {"DatabasePath": ...} or {"DatabaseUrl": ...}."""
    if getattr(request, "param", "sqlite") == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        return {"DatabaseUrl": cluster.new_database()}
    return {"DatabasePath": str(tmp_path / "quarantine.db")}


@pytest.fixture(autouse=True)
def shared_umask():
    """Each test starts with a common umask: vxgate's own code sets 0077 when it runs in this
    process (the vxgate command, config/settings.py), and the Postfix harness must still make
    queue folders its unprivileged daemons can enter."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def sink():
    server = SinkServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vxgate(tmp_path, sink, database):
    from salmon.routing import Router
    import config.testing  # noqa: F401  (loads the handlers into Salmon's Router)
    from salmon_app.gateway import Gateway
    started = []

    def start(**params):
        gateway = Gateway(make_config(tmp_path, sink.port, **dict(database, **params)), Router)
        gateway.start()
        running = Running(gateway)
        started.append(running)
        return running
    yield start
    for running in started:
        running.stop()


class RawClient:
    """A byte-level SMTP client for what smtplib will not send (bare LF, long lines, pipelining)."""

    def __init__(self, port, timeout=15):
        import socket
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return (0, "connection closed")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return (int(lines[-1][:3]), "\n".join(l[4:] for l in lines))

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, data):
        self.send(data if data.endswith(b"\r\n") else data + b"\r\n")
        return self.reply()

    def close(self):
        self.sock.close()


@pytest.fixture
def raw():
    clients = []

    def connect(port):
        client = RawClient(port)
        clients.append(client)
        assert client.reply()[0] == 220
        return client
    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def vxsim():
    """A vxCube emulator on a free loopback port (analysis_time 0.3 s)."""
    from salmon_app.vxcube.sim import VxcubeSim
    sim = VxcubeSim("127.0.0.1", 0, api_key=VXCUBE_KEY, analysis_time=0.3)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def nodes():
    started = []

    def make(*args, **params):
        node = daemon.Node(*args, **params)
        started.append(node)
        return node
    yield make
    for node in started:
        node.stop()
