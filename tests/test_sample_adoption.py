"""Two nodes sharing PostgreSQL: a sample claimed by a node that stops is taken over by a node
still waiting for it, so its mail does not wait for the stopped node to return."""
import time

import pytest

from support.mail import mail_with, pe_image, vxcube_params

from conftest import Running, make_config
from salmon_app.storage import models
from salmon_app.storage.models import Message, Node, Sample


def start(tmp_path, sink, url, name, **params):
    from salmon.routing import Router
    import config.testing  # noqa: F401  (loads the handlers into Salmon's Router)
    from salmon_app.gateway import Gateway
    (tmp_path / name).mkdir()
    gateway = Gateway(make_config(tmp_path / name, sink.port, DatabaseUrl=url, NodeName=name, **params), Router)
    gateway.start()
    return Running(gateway)


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def test_stopped_nodes_sample_is_adopted(tmp_path, sink, vxsim, pg_cluster):
    url = pg_cluster.new_database()
    data = mail_with([("shared.exe", pe_image(b"adopt me"))])
    # node a cannot reach vxCube: its claim on the sample stays "queued"
    a = start(tmp_path, sink, url, "a", SmtpReplyTimeout=0.5,
              **vxcube_params(vxsim, VxcubeApiAddress="http://127.0.0.1:1", VxcubeRetryAttempts=1))
    b = None
    try:
        a.send("x@x.test", ["one@y.test"], data)
        wait(lambda: Sample.select().where(Sample.node == "a").exists(), 15, "node a's claim")
        a.stop()
        b = start(tmp_path, sink, url, "b", SmtpReplyTimeout=0.5, **vxcube_params(vxsim))
        b.send("x@x.test", ["two@y.test"], data)
        wait(lambda: Message.select().where(Message.node == "b", Message.state == models.ANALYSING).exists(),
             15, "node b to wait for node a's sample")
        assert vxsim.stats()["uploads"] == 0
        # node a has not been seen for longer than STALE
        Node.update(seen=time.time() - 3600).where(Node.name == "a").execute()
        wait(lambda: Message.select().where(Message.node == "b", Message.state == models.DELIVERED).exists(),
             40, "node b's message to be delivered")
        assert [m.rcpt_tos for m in sink.wait_for(1, 5)] == [["two@y.test"]]
        assert Sample.get().node == "b" and vxsim.stats()["uploads"] == 1
        # node a's own message stays node a's: it resumes it when it returns
        assert Message.get(Message.node == "a").state == models.ANALYSING
    finally:
        for node in (a, b):
            if node:
                node.stop()
