"""Hostile input against the analysis, over real SMTP with the vxCube emulator and the
default hook: hidden files, a drained licence, an upload budget, malformed vxCube replies.
Every file ends analysed or ``unchecked`` with its cause; sender-controlled causes are
quarantined, outages deferred (for at most VxcubeMaxHold)."""
import json
import logging
import smtplib
import subprocess
import sys
import time

import pytest
from support.hostile import HIDDEN_FILES, VXCUBE_BAD_JSON
from support.mail import EICAR, mail_with, pe_image, vxcube_params

from salmon_app.storage import models
from salmon_app.analysis import FileCheck
from salmon_app.storage.models import Message
from salmon_app.vxcube.extract import extract


def concluded(count, timeout=30):
    """The first ``count`` SMTP-mode records once all are in a final state, oldest first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = list(Message.select().where(Message.mode == "smtp").order_by(Message.created))
        if len(rows) >= count and all(r.state in models.FINAL for r in rows[:count]):
            return rows[:count]
        time.sleep(0.05)
    raise AssertionError("not concluded: %s" % [(r.id, r.state) for r in Message.select()])


def carries_eicar(data):
    """Whether any file a mail program would show in ``data`` holds the EICAR string."""
    return any(EICAR in item.content for item in extract(data).files)


def test_hidden_files_end_analysed_or_quarantined_with_their_cause(vxgate, sink, vxsim, tmp_path):
    gw = vxgate(**vxcube_params(vxsim))
    shown = None
    for number, (name, data, expected) in enumerate(HIDDEN_FILES, 1):
        gw.send("mallory@attacker.test", ["bob@x.test"], data)
        row = concluded(number)[-1]
        analysis = json.loads(row.analysis_json)
        if expected == "analysed":
            assert (row.verdict, row.state) == ("dangerous", "delivered"), name
            assert not carries_eicar(sink.messages[-1].data), name     # repacked, not intact
        else:
            assert row.verdict in ("unchecked", "dangerous") and row.verdict != "none", name
            assert (analysis["cause"], row.state) == (expected, "quarantined"), name
            checks = FileCheck.select().where(FileCheck.message == row.id, FileCheck.verdict == "unchecked")
            assert any(c.reason.startswith(expected + ": ") for c in checks), name
            shown = shown or (row.id, expected)
    assert not any(carries_eicar(m.data) for m in sink.messages)
    # what an administrator sees: the cause of each file, and why the message was held
    config = tmp_path / "show.ini"
    config.write_text("[Quarantine]\nSpoolDir = %s\nDatabasePath = %s\n"
                      % (tmp_path / "spool", tmp_path / "quarantine.db"))
    out = subprocess.run([sys.executable, "-m", "salmon_app.quarantine.cli", "show", shown[0], "-c", str(config)],
                         capture_output=True, text=True, timeout=60).stdout
    assert "reason: %s: " % shown[1] in out and "unchecked: %s" % shown[1] in out, out


def test_draining_the_licence_does_not_let_the_next_file_through(vxgate, sink, vxsim):
    vxsim.configure(uploads_total=40)
    gw = vxgate(**vxcube_params(vxsim))
    many = mail_with([("tool%02d.exe" % n, pe_image(b"distinct %d" % n)) for n in range(45)])
    assert len(many) < 48 * 1024
    gw.send("mallory@attacker.test", ["bob@x.test"], many)
    first = concluded(1)[0]
    assert (json.loads(first.analysis_json)["cause"], first.state) == ("too-many-files", "quarantined")
    assert vxsim.stats()["uploads"] == 20                  # VxcubeMaxFiles, not 45
    gw.send("mallory@attacker.test", ["bob@x.test"], mail_with([("invoice.exe", pe_image(EICAR))]))
    second = concluded(2)[-1]
    assert second.verdict == "dangerous"
    assert not any(carries_eicar(m.data) for m in sink.messages)


def test_spent_quota_defers_then_falls_back_to_quarantine(vxgate, sink, vxsim):
    vxsim.configure(uploads_total=40)
    # the 40 analyses end about 1-2 s after they start (first poll after VxcubeAnalysisTime,
    # on a sweeper round): the hold must outlast that for the 451
    gw = vxgate(**vxcube_params(vxsim, VxcubeMaxFiles=100, VxcubeUploadBudget=0, VxcubeMaxHold=5.0))
    many = mail_with([("tool%02d.exe" % n, pe_image(b"distinct %d" % n)) for n in range(45)])
    with pytest.raises(smtplib.SMTPDataError) as refused:
        gw.send("mallory@attacker.test", ["bob@x.test"], many)
    assert refused.value.smtp_code == 451 and b"quota" in refused.value.smtp_error
    assert vxsim.stats()["uploads"] == 40
    eicar = mail_with([("invoice.exe", pe_image(EICAR))])
    with pytest.raises(smtplib.SMTPDataError) as refused:
        gw.send("mallory@attacker.test", ["bob@x.test"], eicar)
    assert refused.value.smtp_code == 451
    row = concluded(2)[-1]
    check = FileCheck.get(FileCheck.message == row.id)
    assert (row.verdict, check.reason[:7]) == ("unchecked", "quota: ")
    time.sleep(5.2)
    gw.send("mallory@attacker.test", ["bob@x.test"], eicar)       # Postfix trying again, too late
    late = concluded(3)[-1]
    assert (late.state, late.verdict) == ("quarantined", "unchecked")
    assert sink.messages == []


def test_upload_budget_is_per_sender(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim, VxcubeUploadBudget=3))
    gw.send("mallory@attacker.test", ["bob@x.test"], mail_with([("a%d.exe" % n, pe_image(b"a%d" % n)) for n in range(2)]))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        gw.send("mallory@attacker.test", ["bob@x.test"],
                mail_with([("b%d.exe" % n, pe_image(b"b%d" % n)) for n in range(2)], subject="more"))
    assert refused.value.smtp_code == 451 and b"budget" in refused.value.smtp_error
    gw.send("alice@x.test", ["bob@x.test"], mail_with([("c.exe", pe_image(b"c"))], sender="alice@x.test"))
    rows = concluded(3)
    assert [r.state for r in rows] == ["delivered", "tempfailed", "delivered"]
    assert vxsim.stats()["uploads"] == 4           # 2 + 1 (within the budget) + alice's 1


def test_malformed_replies_are_retried_then_unchecked_quietly(vxgate, sink, vxsim, caplog):
    caplog.set_level(logging.DEBUG)
    gw = vxgate(**vxcube_params(vxsim, VxcubeTimeout=2.0), SmtpHook="")
    for number, body in enumerate(VXCUBE_BAD_JSON):
        vxsim.clear_faults()
        vxsim.set_fault(body=body, count=10 ** 6, path="analyses")
        requests = vxsim.stats()["requests"]
        gw.send("a@x.test", ["b@x.test"], mail_with([("x%d.exe" % number, pe_image(b"bad json %d" % number))]))
        row = concluded(number + 1)[-1]
        analysis = json.loads(row.analysis_json)
        assert (row.verdict, analysis["cause"]) == ("unchecked", "vxcube-error"), body
        assert vxsim.stats()["requests"] - requests > 3, body        # retried
    # then vxCube recovers within the time-out: a transient bad reply costs nothing
    vxsim.clear_faults()
    vxsim.set_fault(body=VXCUBE_BAD_JSON[0], count=2, path="analyses/")
    gw.send("a@x.test", ["b@x.test"], mail_with([("eicar.exe", pe_image(EICAR))]))
    assert concluded(len(VXCUBE_BAD_JSON) + 1)[-1].verdict == "dangerous"
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    failures = [r for r in caplog.records if r.name == "vxgate.analysis" and r.levelno >= logging.WARNING]
    # one line when a sample's calls start failing (and at most one more if the error changes)
    assert len(failures) <= 2 * len(VXCUBE_BAD_JSON), [r.getMessage() for r in failures]


def test_an_outage_after_the_reply_is_retried_by_vxgate_then_quarantined(vxgate, sink, vxsim):
    vxsim.configure(uploads_total=0)
    vxsim.set_fault(delay=1.0, path="samples")         # slower than SmtpReplyTimeout: vxgate owns it
    gw = vxgate(**vxcube_params(vxsim, VxcubeMaxHold=3.0), SmtpReplyTimeout=0.3)
    gw.send("mallory@attacker.test", ["bob@x.test"], mail_with([("invoice.exe", pe_image(EICAR))]))
    row = concluded(1, timeout=40)[0]
    assert (row.state, row.verdict, row.answered) == ("quarantined", "unchecked", True)
    assert "VxcubeMaxHold" in row.reason
    history = [e.text for e in models.Event.select().where(models.Event.message == row.id)]
    assert any("checking again" in text for text in history)       # deferred at least once first
    assert sink.messages == []
