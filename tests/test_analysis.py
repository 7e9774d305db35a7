"""vxCube analysis through real SMTP and a real HTTP emulator: verdicts, dedup, faults, restarts."""
import json
import logging
import time

import pytest

from support.gateway import send_at_once
from support.mail import EICAR, mail_with, pe_image, vxcube_params
from support.waiting import wait_until

from salmon_app.analysis import FileCheck, Sample
from salmon_app.storage.models import Message

pytestmark = pytest.mark.both_engines     # each test runs on SQLite and on PostgreSQL


def wait_states(state, count, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = list(Message.select().where(Message.mode == "smtp"))
        if len(rows) >= count and all(r.state == state for r in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError("expected %d %s: %s" % (count, state, [(r.id, r.state) for r in Message.select()]))


def test_verdicts_by_content_reach_the_record(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim), SmtpHook="")
    data = mail_with([("invoice.pdf", pe_image(EICAR)),             # an exe renamed .pdf, with EICAR
                      ("notes.exe", pe_image(b"VXGATE-TEST-SUSPICIOUS")),
                      ("readme.txt", b"just text, not a configured type")])
    gw.send("a@x.test", ["b@x.test"], data)
    row = wait_states("delivered", 1)[0]
    analysis = json.loads(row.analysis_json)
    assert row.verdict == "dangerous" == analysis["verdict"]
    by_name = {f["name"]: f for f in analysis["files"]}
    assert set(by_name) == {"invoice.pdf", "notes.exe"}
    assert by_name["invoice.pdf"]["type"] == "exe" and by_name["invoice.pdf"]["verdict"] == "dangerous"
    assert by_name["invoice.pdf"]["maliciousness"] == 100
    assert by_name["notes.exe"]["verdict"] == "suspicious"
    assert by_name["notes.exe"]["tasks"] and by_name["notes.exe"]["tasks"][0]["status"] == "successful"
    assert sink.wait_for(1, 5)[0].data == data     # without a hook the message passes unchanged


def test_failed_task_is_unchecked_never_dangerous(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim), SmtpHook="")      # the default hook defers it: see test_unchecked_causes
    gw.send("a@x.test", ["b@x.test"], mail_with([("tool.exe", pe_image(b"VXGATE-TEST-FAIL"))]))
    row = wait_states("delivered", 1)[0]
    assert (row.verdict, json.loads(row.analysis_json)["cause"]) == ("unchecked", "vxcube-error")
    assert Sample.select().count() == 0      # a failure is never cached


def test_hundred_messages_one_attachment_one_upload(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim), SmtpReplyTimeout=0.5, SmtpMaxConnections=200)
    data = mail_with([("same.exe", pe_image(b"shared payload"))])
    errors = send_at_once(lambda n: gw.send("a@x.test", ["b%d@x.test" % n], data), 100)
    assert not errors
    wait_states("delivered", 100, timeout=60)
    stats = vxsim.stats()
    assert stats["upload_requests"] == 1 and stats["uploads"] == 1
    assert len(sink.wait_for(100, 10)) == 100


def test_messages_with_the_same_files_in_opposite_orders_never_deadlock(vxgate, sink, vxsim, caplog):
    """Pairs of messages carrying two new files, one in each order, checked at the same moment:
    each check claims its samples in one transaction, in one global order (no deadlock on
    PostgreSQL), and a check written while the sample finishes still gets its verdict."""
    gw = vxgate(**vxcube_params(vxsim), SmtpWorkers=8, SmtpReplyTimeout=0.5, SmtpMaxConnections=200)
    pairs = 30
    files = [(pe_image(b"pair %d first" % n), pe_image(b"pair %d second" % n)) for n in range(pairs)]

    def send(n):
        one, two = files[n // 2]
        attached = [("one.exe", one), ("two.exe", two)]
        gw.send("a@x.test", ["b%d@x.test" % n], mail_with(attached if n % 2 else attached[::-1]))
    assert not send_at_once(send, 2 * pairs)
    wait_states("delivered", 2 * pairs, timeout=60)
    assert vxsim.stats()["uploads"] == 2 * pairs
    assert {r.verdict for r in Message.select()} == {"clean"}
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, problems     # no deadlock, no internal error, no check that missed its verdict


def test_cache_and_lookup_avoid_uploads(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim))
    data = mail_with([("a.exe", pe_image(b"cached one"))])
    gw.send("a@x.test", ["b@x.test"], data)
    wait_states("delivered", 1)
    gw.send("a@x.test", ["c@x.test"], data)
    wait_states("delivered", 2)
    assert vxsim.stats()["upload_requests"] == 1 and vxsim.stats()["analyses"] == 1
    assert FileCheck.select().where(FileCheck.cached == True).count() == 1  # noqa: E712
    # a new vxgate (empty cache) looks the content up at vxCube before uploading
    Sample.delete().execute()
    gw.send("a@x.test", ["d@x.test"], data)
    wait_states("delivered", 3)
    assert vxsim.stats()["upload_requests"] == 1


def test_faults_are_retried_without_losing_or_misjudging(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim))
    vxsim.set_fault(status=500, count=2)
    vxsim.set_fault(status=429, retry_after=1, count=1)
    vxsim.set_fault(drop=True, count=1)
    vxsim.set_fault(delay=1.0, count=1)
    gw.send("a@x.test", ["b@x.test"], mail_with([("x.exe", pe_image(EICAR))]))
    row = wait_states("delivered", 1, timeout=30)[0]
    assert row.verdict == "dangerous"


def test_vxcube_down_means_unchecked_after_timeout(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim, VxcubeTimeout=1.5), SmtpHook="")
    vxsim.stop()
    gw.send("a@x.test", ["b@x.test"], mail_with([("x.exe", pe_image(b"never analysed"))]))
    row = wait_states("delivered", 1, timeout=30)[0]
    assert row.verdict == "unchecked"
    assert json.loads(row.analysis_json)["files"][0]["reason"].startswith("vxcube-error: vxCube error")


def test_slow_analysis_answers_250_then_finishes(vxgate, sink, vxsim):
    vxsim.configure(analysis_time=2.0)
    gw = vxgate(**vxcube_params(vxsim), SmtpReplyTimeout=0.3)
    started = time.time()
    gw.send("a@x.test", ["b@x.test"], mail_with([("x.exe", pe_image(b"slow"))]))
    assert time.time() - started < 2
    row = Message.get()
    # answered before the outcome: owned, still in flight (on a busy machine the check stage
    # may not have reached the analysis yet), then finished in the background
    assert row.answered and row.state in ("stored", "checking", "analysing")
    wait_states("delivered", 1, timeout=20)


def test_mail_without_files_is_not_blocked_by_pending_analyses(vxgate, sink, vxsim):
    vxsim.configure(analysis_time=5.0)
    gw = vxgate(**vxcube_params(vxsim), SmtpReplyTimeout=0.2)
    for n in range(20):
        gw.send("a@x.test", ["b@x.test"], mail_with([("f%d.exe" % n, pe_image(b"%d" % n))]))
    started = time.time()
    gw.send("a@x.test", ["b@x.test"], b"Subject: plain\r\n\r\nno files\r\n")
    assert time.time() - started < 1.0
    assert sink.wait_for(1, 2)[0].data == b"Subject: plain\r\n\r\nno files\r\n"


def test_restart_during_analysis_does_not_upload_again(vxgate, sink, vxsim):
    vxsim.configure(analysis_time=1.5)
    gw = vxgate(**vxcube_params(vxsim), SmtpReplyTimeout=0.2)
    for n in range(3):
        gw.send("a@x.test", ["b@x.test"], mail_with([("f%d.exe" % n, pe_image(b"restart %d" % n))]))
    deadline = time.time() + 10
    while Sample.select().where(Sample.state == "analysing").count() < 3 and time.time() < deadline:
        time.sleep(0.05)
    gw.stop()
    gw2 = vxgate(**vxcube_params(vxsim))
    wait_states("delivered", 3, timeout=20)
    assert vxsim.stats()["upload_requests"] == 3 and vxsim.stats()["analyses"] == 3
    assert len(sink.wait_for(3, 5)) == 3
    gw2.stop()


def test_whole_message_procedure(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim, VxcubeSendMode="Message"))
    data = mail_with([("a.exe", pe_image(EICAR)), ("b.exe", pe_image(b"clean"))])
    gw.send("a@x.test", ["b@x.test"], data)
    row = wait_states("delivered", 1)[0]
    files = json.loads(row.analysis_json)["files"]
    assert sorted(f["verdict"] for f in files) == ["clean", "dangerous"]
    assert vxsim.stats()["upload_requests"] == 1     # one .eml upload, split by vxCube


def test_api_key_never_logged(vxgate, sink, vxsim, caplog):
    gw = vxgate(**vxcube_params(vxsim))
    vxsim.set_fault(status=500, count=3)
    gw.send("a@x.test", ["b@x.test"], mail_with([("x.exe", pe_image(b"key check"))]))
    wait_states("delivered", 1, timeout=30)
    from support.mail import VXCUBE_KEY
    assert VXCUBE_KEY not in caplog.text


def test_only_mail_that_may_carry_files_is_parsed():
    from salmon_app.analysis import may_carry_files
    assert not may_carry_files(b"Subject: x\r\n\r\nplain\r\n")
    assert not may_carry_files(b"Content-Type: text/plain; charset=utf-8\r\n\r\nx\r\n")
    assert may_carry_files(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--\r\n")
    assert may_carry_files(b"Content-Type: application/pdf\r\n\r\n%PDF\r\n")
    assert may_carry_files(b"Content-Type: text/plain; name=run.js\r\n\r\nx\r\n")
    assert may_carry_files(b"Content-Type: text/html\r\nContent-Disposition: attachment\r\n\r\nx\r\n")
    # a text that may hide a uuencoded file, a header block that says two things
    assert may_carry_files(b"Subject: x\r\n\r\nhello\r\nbegin 644 a.exe\r\nend\r\n")
    assert not may_carry_files(b"Subject: x\r\n\r\nhello\r\nbeginning at ten\r\n")
    assert may_carry_files(b"Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n")


def test_a_poll_reads_its_sample_and_message_as_peewee_would(vxgate, sink, vxsim):
    """The poll's own read (models.fetch, a statement built once) gives the row get() gives,
    not marked changed, and a save of it changes the row."""
    from salmon_app.storage import models
    vxsim.configure(analysis_time=30.0)
    gw = vxgate(**vxcube_params(vxsim), SmtpReplyTimeout=0.2)
    gw.send("a@x.test", ["b@x.test"], mail_with([("f.exe", pe_image(b"fetched"))]))
    wait_until(lambda: Sample.select().where(Sample.state == "analysing").exists(), 10, "an analysis running")
    sample = Sample.get(Sample.state == "analysing")
    fetched = models.fetch(Sample, sample.sha256)
    assert fetched.__data__ == sample.__data__ and not fetched._dirty
    assert isinstance(fetched.uploaded, bool) and fetched.uploaded
    message = Message.get(Message.mode == "smtp")
    assert models.fetch(Message, message.id).__data__ == message.__data__
    assert models.fetch(Sample, "0" * 64) is None and models.fetch(Message, "nosuchid") is None
    with models.writing():
        models.lock_samples([sample.sha256])
        fetched.reason = "saved from a fetched row"
        fetched.save()
    assert Sample.get(Sample.sha256 == sample.sha256).reason == "saved from a fetched row"


def test_polls_of_analyses_started_together_are_spread():
    """Each wait is drawn within ±20% of the schedule's, so a burst of analyses is not polled
    as a burst ever after."""
    from types import SimpleNamespace
    from salmon_app.analysis import Analyser
    analyser = SimpleNamespace(due={})
    now = time.time()
    for n in range(200):
        Analyser.later(analyser, SimpleNamespace(sha256="%064d" % n), 10.0)
    waits = sorted(when - now for when in analyser.due.values())
    assert len(waits) == 200 and 8.0 <= waits[0] and waits[-1] <= 12.1
    assert waits[-1] - waits[0] > 2.0 and 9.0 < waits[100] < 11.0


def test_an_analysis_is_first_polled_once_its_time_is_up(vxgate, sink, vxsim):
    """vxCube runs the sample for VxcubeAnalysisTime before it can tell a verdict: no poll
    before then, though the emulator has the verdict ready at once, then one poll finds it."""
    vxsim.configure(analysis_time=0.0)
    gw = vxgate(**vxcube_params(vxsim, VxcubeAnalysisTime=2.0), SmtpReplyTimeout=0.2, SmtpHook="")
    gw.send("a@x.test", ["b@x.test"], mail_with([("tool.exe", pe_image(b"polled once"))]))
    wait_until(lambda: vxsim.stats()["analyses"] == 1, 10, "the analysis to start")
    started, requests = time.time(), vxsim.stats()["requests"]
    wait_until(lambda: vxsim.stats()["requests"] > requests, 10, "the first poll")
    assert time.time() - started >= 1.7      # 2 s after the start, which came a little earlier
    row = wait_states("delivered", 1, timeout=10)[0]
    assert row.verdict == "clean" and vxsim.stats()["requests"] == requests + 1


def test_a_sample_that_ends_while_its_message_is_checked_wakes_it_at_once(vxgate, sink, vxsim):
    """The check worker read the checks (pending), the sample ended and found the message not yet
    analysing, then the worker recorded it analysing: the message goes on when the worker lets
    it go, not at the sweeper's look at analysing messages once a minute."""
    from salmon_app.storage import models
    vxsim.configure(analysis_time=30.0)
    gw = vxgate(**vxcube_params(vxsim), SmtpReplyTimeout=0.2)
    gw.send("a@x.test", ["b@x.test"], mail_with([("f.exe", pe_image(b"raced"))]))
    queue_id = wait_states("analysing", 1)[0].id
    gateway = gw.gateway
    # past the sweeper's first round, which looks at analysing messages too
    wait_until(lambda: gateway.sweeper.rounds >= 1, 10, "the sweeper's first round")
    assert gateway.registry.hold(queue_id)              # as its check worker holds it
    with models.writing():
        Message.update(state=models.CHECKING).where(Message.id == queue_id).execute()
        FileCheck.update(verdict="clean").where(FileCheck.message == queue_id).execute()
    gateway.checks.analyser._resume(queue_id)          # the sample ended meanwhile
    with models.writing():
        Message.update(state=models.ANALYSING).where(Message.id == queue_id).execute()
    if gateway.registry.release(queue_id):              # the worker lets it go (Gateway.run_step)
        gateway.submit(queue_id, models.ANALYSING)
    wait_states("delivered", 1, timeout=10)
    assert len(sink.wait_for(1, 5)) == 1
