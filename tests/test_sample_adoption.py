"""Two nodes sharing PostgreSQL: a sample claimed by a node that stops is taken over by a node
still waiting for it, so its mail does not wait for the stopped node to return."""
import time

from support.mail import mail_with, pe_image, vxcube_params
from support.waiting import wait_until

from salmon_app.storage import models
from salmon_app.storage.models import Message, Node, Sample


def node(vxgate, tmp_path, url, name, **params):
    """A node of its own (spool, name, listener) on the shared database ``url``."""
    return vxgate(DatabaseUrl=url, NodeName=name, SpoolDir=str(tmp_path / name / "spool"), **params)


def test_stopped_nodes_sample_is_adopted(vxgate, tmp_path, sink, vxsim, pg_cluster):
    url = pg_cluster.new_database()
    data = mail_with([("shared.exe", pe_image(b"adopt me"))])
    # node a cannot reach vxCube: its claim on the sample stays "queued"
    a = node(vxgate, tmp_path, url, "a", SmtpReplyTimeout=0.5,
             **vxcube_params(vxsim, VxcubeApiAddress="http://127.0.0.1:1", VxcubeRetryAttempts=1))
    a.send("x@x.test", ["one@y.test"], data)
    wait_until(lambda: Sample.select().where(Sample.node == "a").exists(), 15, "node a's claim")
    a.stop()
    b = node(vxgate, tmp_path, url, "b", SmtpReplyTimeout=0.5, **vxcube_params(vxsim))
    b.send("x@x.test", ["two@y.test"], data)
    wait_until(lambda: Message.select().where(Message.node == "b", Message.state == models.ANALYSING).exists(),
         15, "node b to wait for node a's sample")
    assert vxsim.stats()["uploads"] == 0
    # node a has not been seen for longer than STALE
    Node.update(seen=time.time() - 3600).where(Node.name == "a").execute()
    wait_until(lambda: Message.select().where(Message.node == "b", Message.state == models.DELIVERED).exists(),
         40, "node b's message to be delivered")
    assert [m.rcpt_tos for m in sink.wait_for(1, 5)] == [["two@y.test"]]
    assert Sample.get().node == "b" and vxsim.stats()["uploads"] == 1
    # node a's own message stays node a's: it resumes it when it returns
    assert Message.get(Message.node == "a").state == models.ANALYSING
