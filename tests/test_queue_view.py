"""``vxgate queue``: what vxgate holds, why each message waits and until when, during a dead
next hop and a vxCube outage; flush, hold and release-hold change what then happens.

The commands run as subprocesses against the running gateway's real database, as an
administrator would run them beside the daemon.
"""
import json
import subprocess
import sys
import time

from salmon_app.storage.models import Message
from support.mail import mail_with, pe_image, vxcube_params
from support.waiting import wait_until

from test_quarantine import ROOT
from test_relay import body, wait_state


def vq(config_path, *args, check=0):
    proc = subprocess.run([sys.executable, "-m", "salmon_app.cli", "queue", *args, "-c", str(config_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check is not None:
        assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def ini(tmp_path, gw, sink_port, **extra):
    path = tmp_path / "vxgate.ini"
    lines = ["[MailD]", "SmtpSocket = 127.0.0.1:%d" % gw.port, "SmtpSenderRelay = 127.0.0.1:%d" % sink_port,
             "[Quarantine]", "SpoolDir = %s" % (tmp_path / "spool"), "DatabasePath = %s" % (tmp_path / "quarantine.db")]
    root = ["%s = %s" % item for item in extra.items()]
    path.write_text("\n".join((["[Root]"] + root if root else []) + lines) + "\n")
    return path


def test_dead_next_hop_reason_flush_hold_and_release(vxgate, sink, tmp_path):
    gw = vxgate(SmtpRelayRetryMin=120.0, SmtpRelayRetryMax=120.0)
    config = ini(tmp_path, gw, sink.port)
    sink.stop()
    gw.send("alice@x.test", ["bob@x.test", "carol@x.test"], body(1))
    row = wait_state(Message.mode == "smtp", "deferred")[0]
    out = vq(config).stdout
    assert row.id in out and "alice@x.test -> bob@x.test, carol@x.test" in out
    assert "relay deferred: 4.4.1 next hop 127.0.0.1:%d" % sink.port in out
    assert "from 127.0.0.1:%d, next try in 1m" % sink.port in out or "next try in 2m" in out, out
    assert "(attempt 1, bounces after 5d)" in out and "-- 1 message: 1 deferred; oldest" in out
    doc = json.loads(vq(config, "--json").stdout)
    entry = doc["messages"][0]
    assert doc["total"] == 1 and doc["by_state"] == {"deferred": 1}
    assert entry["id"] == row.id and entry["answered"] and entry["state"] == "deferred"
    assert entry["recipients"] == ["bob@x.test", "carol@x.test"] and entry["next_step"]

    # hold: the next hop comes back and a flush is asked for, but a parked message stays put
    assert "on hold (was deferred)" in vq(config, "hold", row.id).stdout
    assert "already on hold" in vq(config, "hold", row.id, check=1).stderr
    sink.start()
    vq(config, "flush")
    time.sleep(3)
    assert not sink.messages and Message.get_by_id(row.id).state == "parked"
    assert "(on hold (was deferred); vxgate queue release-hold %s)" % row.id in vq(config).stdout

    # release-hold, then flush: delivered at once although the back-off said two minutes
    assert "back to deferred" in vq(config, "release-hold", row.id).stdout
    assert "not on hold" in vq(config, "release-hold", row.id, check=1).stderr
    vq(config, "flush", row.id)
    wait_state(Message.id == row.id, "delivered", timeout=15)
    assert len(sink.wait_for(1, 5)) == 1
    assert vq(config).stdout.strip() == "vxgate holds no message"
    assert "finished (state delivered)" in vq(config, "hold", row.id, check=1).stderr
    assert "not a queue id" in vq(config, "hold", "not-an-id", check=2).stderr


def test_vxcube_outage_reason_and_give_up_time_match_what_happens(vxgate, sink, vxsim, tmp_path):
    gw = vxgate(SmtpReplyTimeout=0.5, **vxcube_params(vxsim, VxcubeTimeout=8.0))
    config = ini(tmp_path, gw, sink.port, VxcubeTimeout="8s")
    vxsim.stop()
    started = time.time()
    with gw.client() as client:
        client.sendmail("alice@x.test", ["bob@x.test"], mail_with([("invoice.exe", pe_image(b"outage"))]))
    row = wait_until(lambda: Message.get_or_none((Message.mode == "smtp") & (Message.state == "analysing")), 20,
                "the message to wait for vxCube")
    out = vq(config).stdout
    assert "waiting for vxCube: upload of sample" in out and "(invoice.exe)" in out, out
    doc = json.loads(vq(config, "--json").stdout)["messages"][0]
    assert doc["state"] == "analysing" and "gives up in" in doc["reason"]
    from datetime import datetime
    gives_up = datetime.fromisoformat(doc["next_step"]).timestamp()
    assert started + 5 <= gives_up <= started + 12, (gives_up - started)
    # it is still waiting shortly before that time, and has moved on a little after it
    time.sleep(max(0.0, gives_up - time.time() - 2.5))
    assert Message.get_by_id(row.id).state == "analysing"
    wait_until(lambda: Message.get_by_id(row.id).state != "analysing", 30, "the analysis to give up")
    assert time.time() >= gives_up - 1.5
