"""``vxgate quarantine``: the administrator's commands, driven as a user would, beside a live gateway.

Every command runs as a separate process (``python -m salmon_app.quarantine.cli``) against the
database and spool of a real gateway running in this process, relaying to the test sink.
Records for the bulk tests (a few hundred) are written with the models, files with
``Spool.store``; the messages that are released, exported and shown came in over SMTP.
"""
import argparse
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from email import policy
from email.message import EmailMessage

import pytest

from salmon_app.storage import models
from salmon_app.analysis import FileCheck
from salmon_app.storage.models import Event, Message, Recipient

pytestmark = pytest.mark.both_engines     # each test runs on SQLite and on PostgreSQL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOUR, DAY = 3600.0, 86400.0


# ---------------------------------------------------------------- helpers
def q(config_path, *args, check=None, text=True, timeout=60):
    """Run ``vxgate quarantine ARGS`` as a user would; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "salmon_app.quarantine.cli", *args, "-c", str(config_path)],
                          cwd=ROOT, capture_output=True, text=text, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
    if text:
        assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def qjson(config_path, *args):
    return json.loads(q(config_path, *args, "--json", check=0).stdout)


def mail(subject="hello", attachments=(), sender="alice@x.test", to="bob@y.test"):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = "<%s@x.test>" % os.urandom(6).hex()
    msg.set_content("Text part.\n")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=policy.SMTP)


def send(gw, mail_from, rcpt_to, data, xforward=None):
    with gw.client() as client:
        client.ehlo()
        if xforward:
            client.docmd("XFORWARD", xforward)
        return client.sendmail(mail_from, rcpt_to, data)


def wait_until(predicate, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def message_of(sink_message):
    return Message.get(Message.message_id == _header(sink_message.data, b"Message-ID"))


def _header(data, name):
    for line in data.split(b"\r\n"):
        if line.lower().startswith(name.lower() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return None


QUARANTINE_HOOK = """
function smtp_hook(ctx)
  if string.find(ctx.message.header.value("Subject") or "", "quarantine me", 1, true) then
    return {action = "quarantine", message = "held for review"}
  end
  return {action = "accept"}
end
"""


@pytest.fixture
def gw(vxgate, sink, tmp_path, database):
    """A running gateway (a hook quarantines subjects with "quarantine me"; delivered files are
    kept) and the configuration file the commands use."""
    running = vxgate(KeepDeliveredMessages=True, SmtpHook=QUARANTINE_HOOK,
                     DeliveredRetention=3650 * 86400.0, QuarantineRetention=3650 * 86400.0)  # seeded history must stay
    config_path = tmp_path / "vxgate.ini"
    config_path.write_text(
        "[MailD]\nSmtpSocket = 127.0.0.1:%d\nSmtpSenderRelay = 127.0.0.1:%d\nSmtpHostname = vxgate.test\n"
        "[Quarantine]\nSpoolDir = %s\n%s = %s\n"
        % (running.port, sink.port, tmp_path / "spool", *next(iter(database.items()))))
    running.config_path = config_path
    running.spool = running.gateway.spool
    return running


NODE = socket.gethostname()      # the gateway's NodeName: the host name by default
SEED_STATES = ["quarantined", "delivered", "rejected", "held", "failed", "discarded", "deferred", "quarantined",
               "closed", "reported"]
SEED_VERDICTS = ["none", "clean", "suspicious", "dangerous", "unchecked"]


def seed(spool, n, now=None, files_every=4, prefix="S"):
    """Insert ``n`` records (and every ``files_every``-th file) spread over 60 days; returns their dicts."""
    now = now or time.time()
    rng = random.Random(n)
    rows = []
    for i in range(n):
        state = SEED_STATES[i % len(SEED_STATES)]
        created = now - (i * 60 * DAY / n) - 30
        queue_id = "%s%015X" % (prefix, rng.getrandbits(60))
        sender = "s%d@%s" % (i % 7, "spam.test" if i % 2 else "ok.test")
        subject = "seed %d %s" % (i, "invoice" if i % 3 == 0 else "report")
        data = mail(subject, sender=sender)
        has_file = i % files_every == 0
        if has_file:
            spool.store(queue_id, data)
        rows.append(dict(
            id=queue_id, mode="bcc" if state in ("closed", "reported") else "notice" if i % 20 == 1 else "smtp",
            state=state, answered=True, created=created, updated=created + 1, mail_from=sender,
            rcpt_json=json.dumps(["victim%d@q.test" % (i % 5)] + (["other@q.test"] if i % 4 == 1 else [])),
            size=len(data), sha256=hashlib.sha256(data).hexdigest(),
            subject=subject,
            verdict=SEED_VERDICTS[i % len(SEED_VERDICTS)], has_file=has_file,
            node=NODE, next_attempt=now + 1e6, action="quarantine" if state == "quarantined" else "",
            reason="seeded" if state == "quarantined" else ""))
    with models.writing():
        for start in range(0, n, 100):
            Message.insert_many(rows[start:start + 100]).execute()
        Recipient.insert_many([{"message": r["id"], "address": a} for r in rows for a in json.loads(r["rcpt_json"])]).execute()
        Event.insert_many([{"message": r["id"], "time": r["updated"], "kind": r["state"], "text": "seeded"}
                           for r in rows]).execute()
    return rows


# ---------------------------------------------------------------- list
def test_list_filters_sort_limit_and_json(gw, sink):
    for n in range(3):
        send(gw, "real@x.test", ["bob@y.test", "carol@y.test"], mail("real %d" % n))
    sink.wait_for(3)
    wait_until(lambda: Message.select().where(Message.state == "delivered").count() == 3, what="delivered")
    now = time.time()
    rows = seed(gw.spool, 320, now)
    cfg = gw.config_path

    everything = qjson(cfg, "list")
    assert everything["total"] == everything["count"] == 323
    created = [m["created_epoch"] for m in everything["messages"]]
    assert created == sorted(created, reverse=True)          # newest first by default

    quarantined = qjson(cfg, "list", "--state", "quarantined")
    assert quarantined["total"] == sum(r["state"] == "quarantined" for r in rows)
    assert {m["state"] for m in quarantined["messages"]} == {"quarantined"}

    several = qjson(cfg, "list", "--state", "held,failed", "--verdict", "dangerous", "--verdict", "suspicious")
    assert several["total"] == sum(r["state"] in ("held", "failed") and r["verdict"] in ("dangerous", "suspicious")
                                   for r in rows) > 0

    by_sender = qjson(cfg, "list", "--sender", "S3@SPAM", "--mode", "smtp")
    assert by_sender["total"] == sum(r["mail_from"] == "s3@spam.test" and r["mode"] == "smtp" for r in rows) > 0

    real = Message.get(Message.subject == "real 1")
    by_message_id = qjson(cfg, "list", "--message-id", real.message_id.strip("<>")[:10])   # as the web console searches
    assert [m["id"] for m in by_message_id["messages"]] == [real.id]

    by_rcpt = qjson(cfg, "list", "--recipient", "other@q.test", "--subject", "INVOICE")
    assert by_rcpt["total"] == sum("other@q.test" in r["rcpt_json"] and "invoice" in r["subject"] for r in rows) > 0

    window = qjson(cfg, "list", "--since", "10d", "--until", "2d")
    assert window["total"] == sum(now - 10 * DAY <= r["created"] < now - 2 * DAY for r in rows) > 0

    day = time.strftime("%Y-%m-%d", time.localtime(now - 20 * DAY))
    iso = qjson(cfg, "list", "--until", day, "--state", "in-flight")
    assert {m["state"] for m in iso["messages"]} == {"deferred"}
    assert all(m["created_epoch"] < now - 19 * DAY for m in iso["messages"])

    biggest = qjson(cfg, "list", "--sort", "size", "--limit", "5")
    assert biggest["count"] == 5 and biggest["total"] == 323
    assert [m["size"] for m in biggest["messages"]] == sorted((m["size"] for m in everything["messages"]), reverse=True)[:5]
    oldest = qjson(cfg, "list", "--reverse", "--limit", "1")["messages"][0]
    assert oldest["id"] == min(rows, key=lambda r: r["created"])["id"]
    senders = [m["sender"] for m in qjson(cfg, "list", "--sort", "sender")["messages"]]
    assert senders == sorted(senders)

    # for people: a header, aligned columns, first recipient + count, a total line
    out = q(cfg, "list", "--state", "quarantined", "--limit", "7", check=0).stdout.splitlines()
    node = ["NODE"] if models.shared() else []      # shown when several nodes share the database
    assert out[0].split() == ["ID"] + node + ["TIME", "STATE", "VERDICT", "SIZE", "SENDER", "RECIPIENTS", "SUBJECT"]
    assert out[-1] == "7 of %d messages" % quarantined["total"]
    column = out[0].index("STATE")
    assert all(line[column:].startswith("quarantined") for line in out[1:-1])
    multi = q(cfg, "list", "--recipient", "other@q.test", "--limit", "3", check=0).stdout.splitlines()
    assert all(" victim" in line and "@q.test +1 " in line for line in multi[1:-1])
    assert q(cfg, "list", "--subject", "no such subject", check=0).stdout.strip() == "0 messages"


def test_usage_errors_and_missing_messages(gw, tmp_path):
    cfg = gw.config_path
    bad = q(cfg, "list", "--state", "lost", check=2)
    assert "unknown state 'lost'" in bad.stderr and "usage:" in bad.stderr
    assert "bad time 'someday'" in q(cfg, "list", "--since", "someday", check=2).stderr
    assert "is not a queue id" in q(cfg, "show", "../../etc/passwd", check=2).stderr
    missing = q(cfg, "show", "0123456789ABCDEF", check=1)
    assert missing.stderr.strip() == "vxgate quarantine: 0123456789ABCDEF: no such message"
    assert q(cfg, "export", "0123456789abcdef", check=1).stdout == ""
    assert "needs at least one filter" in q(cfg, "release", "--all-matching", check=2).stderr
    assert "give the id" in q(cfg, "release", check=2).stderr
    assert "in flight" in q(cfg, "purge", "--older-than", "1d", "--state", "deferred", check=2).stderr
    q(cfg, check=2)
    elsewhere = tmp_path / "other.ini"
    elsewhere.write_text("[Quarantine]\nDatabasePath = %s\n" % (tmp_path / "nowhere.db"))
    lost = q(elsewhere, "list", check=1)
    assert "no quarantine database at" in lost.stderr and not (tmp_path / "nowhere.db").exists()
    broken = tmp_path / "broken.ini"
    broken.write_text("[Quarantine]\nRetention = 1d\n")
    assert "unknown parameter 'Retention'" in q(broken, "list", check=2).stderr


# ---------------------------------------------------------------- show
def test_show_everything_about_a_message(gw, sink):
    payload = b"MZ" + os.urandom(200)
    data = mail("quarantine me \x1b[2Jfigures", [("figures.exe", payload)], to="bob@y.test")
    send(gw, "alice@x.test", ["bob@y.test", "carol@y.test"], data,
         xforward="NAME=mail.example.net ADDR=192.0.2.7 PROTO=ESMTP HELO=mx.example.net")
    row = Message.get(Message.mode == "smtp")
    assert row.state == "quarantined"
    tasks = [{"id": 11, "platform_code": "winxpx86", "status": "successful", "verdict": "malware1", "maliciousness": 90},
             {"id": 12, "platform_code": "win10x64", "status": "failed", "verdict": None, "maliciousness": None}]
    with models.writing():
        FileCheck.create(message=row.id, path="2", name="figures.exe", type="exe", size=len(payload),
                         sha256=hashlib.sha256(payload).hexdigest(), verdict="dangerous", maliciousness=90,
                         analysis_id="A-77", tasks_json=json.dumps(tasks))

    out = q(gw.config_path, "show", row.id.lower(), check=0).stdout
    assert out.startswith("Message %s\n" % row.id)
    for expected in ("State:       quarantined", "Action:      quarantine", "Reason:      held for review",
                     "MAIL FROM:<alice@x.test>", "RCPT TO:<carol@y.test>", "addr:      192.0.2.7",
                     "name:      mail.example.net", "Subject: quarantine me ?[2Jfigures",
                     "application/octet-stream", hashlib.sha256(payload).hexdigest(), "attachment figures.exe",
                     "figures.exe  dangerous maliciousness 90", "vxCube analysis A-77",
                     "task 11 on winxpx86: successful, malware1 (maliciousness 90)", "task 12 on win10x64: failed, none",
                     "bob@y.test    pending", "History"):
        assert expected in out, expected
    assert "_mail_params" not in out and "\x1b" not in out
    history = out.split("\nHistory\n")[1].splitlines()
    assert [line.split()[2] for line in history] == ["received", "quarantined"]
    assert "hook: quarantine (held for review)" in history[1]

    info = qjson(gw.config_path, "show", row.id)
    assert info["client"]["addr"] == "192.0.2.7" and not any(k.startswith("_") for k in info["client"])
    assert info["envelope"]["rcpt_to"] == ["bob@y.test", "carol@y.test"]
    assert [p["type"] for p in info["parts"]] == ["multipart/mixed", "text/plain", "application/octet-stream"]
    assert info["parts"][2]["size"] == len(payload) and info["problems"] == []
    assert info["files"][0]["tasks"][0]["platform"] == "winxpx86"
    assert [h["kind"] for h in info["history"]] == ["received", "quarantined"]


def test_show_survives_broken_mime_and_a_missing_file(gw):
    broken = (b"From: x@x.test\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n"
              b"--b0\r\nContent-Type: application/octet-stream; name*=utf-8''%ZZ%\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n@@@not base64!!\r\n"
              + b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                         for i in range(200)))
    [row] = seed(gw.spool, 1, files_every=1)
    gw.spool.store(row["id"], broken)
    info = qjson(gw.config_path, "show", row["id"])
    assert any("nested deeper than 50 levels" in p for p in info["problems"])
    assert "InvalidBase64LengthDefect" in info["parts"][1]["defects"] and info["parts"][1]["size"] == 15
    out = q(gw.config_path, "show", row["id"], check=0).stdout
    assert "problem: part 1.2.1" in out and "[InvalidBase64LengthDefect]" in out
    gw.spool.remove(row["id"])
    out = q(gw.config_path, "show", row["id"], check=0).stdout
    assert "missing from the spool" in out and "(no stored file)" in out


# ---------------------------------------------------------------- release
def _quarantined_message(gw, subject="quarantine me"):
    """A real message the hook quarantined: answered 250, file kept, nothing relayed."""
    data = mail(subject, [("a.pdf", b"%PDF-1.4 " + os.urandom(64))])
    with gw.client() as client:
        client.ehlo()
        client.mail("alice@x.test")
        client.rcpt("bob@y.test")
        client.rcpt("carol@y.test")
        code, text = client.data(data)
    assert code == 250 and b"held in quarantine" in text
    row = Message.get(Message.subject == subject)
    assert row.state == "quarantined" and gw.spool.exists(row.id)
    return row, data


def test_release_sends_the_original_bytes_once(gw, sink):
    row, data = _quarantined_message(gw)
    stored = gw.spool.read(row.id)
    assert stored == data

    out = q(gw.config_path, "release", row.id, check=0).stdout
    assert out.startswith("%s: released to bob@y.test, carol@y.test (250 2.0.0 Ok: queued as SINK" % row.id)
    [released] = sink.wait_for(1)
    assert released.data == stored                       # byte for byte, not re-encoded
    assert released.mail_from == "alice@x.test" and released.rcpt_tos == ["bob@y.test", "carol@y.test"]
    event = Event.get(Event.message == row.id, Event.kind == "released")
    assert "by " in event.text and "250 2.0.0" in event.text
    assert Message.get_by_id(row.id).state == "quarantined"  # the history stays true; the marker says released

    again = q(gw.config_path, "release", row.id, check=0).stdout
    assert "already released" in again and "--force" in again
    time.sleep(0.3)
    assert len(sink.messages) == 1

    forced = q(gw.config_path, "release", row.id, "--to", "analyst@z.test", "--force", check=0).stdout
    assert "released to analyst@z.test" in forced
    second = sink.wait_for(2)[1]
    assert second.rcpt_tos == ["analyst@z.test"] and second.data == stored
    info = qjson(gw.config_path, "show", row.id)
    assert info["released"]["count"] == 2 and info["released"]["recipients"] == "analyst@z.test"
    assert [h["kind"] for h in info["history"]].count("released") == 2
    listed = qjson(gw.config_path, "list", "--state", "quarantined")["messages"][0]
    assert listed["released"]["user"]


def test_release_refuses_in_flight_fileless_and_unreachable(gw, sink):
    rows = seed(gw.spool, 10, files_every=2)
    deferred = next(r for r in rows if r["state"] == "deferred")
    fileless = next(r for r in rows if not r["has_file"] and r["state"] != "deferred")
    busy = q(gw.config_path, "release", deferred["id"], check=1)
    assert "still in flight (state deferred)" in busy.stderr
    nofile = q(gw.config_path, "release", fileless["id"], check=1)
    assert "no stored file to release" in nofile.stderr
    delivered_without_file = next(r for r in rows if r["state"] == "delivered" and not r["has_file"])
    assert "KeepDeliveredMessages" in q(gw.config_path, "release", delivered_without_file["id"], check=1).stderr

    copy = next(r for r in rows if r["state"] == "reported" or r["mode"] == "bcc")
    assert "a BCC copy is never delivered" in q(gw.config_path, "release", copy["id"], check=1).stderr

    row, _ = _quarantined_message(gw)
    sink.stop()
    down = q(gw.config_path, "release", row.id, check=1)
    assert "release failed, nothing was sent" in down.stderr
    assert Event.get(Event.message == row.id, Event.kind == "release-failed")
    sink.start()
    q(gw.config_path, "release", row.id, check=0)         # not marked released by the failure
    sink.wait_for(1)


def test_release_all_matching(gw, sink):
    rows = seed(gw.spool, 40, files_every=1)
    chosen = [r for r in rows if r["state"] == "quarantined" and r["mail_from"].endswith("@spam.test")]
    assert chosen
    dry = q(gw.config_path, "release", "--all-matching", "--state", "quarantined", "--sender", "@spam.test",
            "--dry-run", check=0).stdout
    assert "%d message(s) selected; nothing sent" % len(chosen) in dry
    time.sleep(0.2)
    assert sink.messages == []
    out = q(gw.config_path, "release", "--all-matching", "--state", "quarantined", "--sender", "@spam.test", check=0).stdout
    assert out.count(": released to ") == len(chosen)
    assert len(sink.wait_for(len(chosen))) == len(chosen)
    assert {m.data for m in sink.messages} == {gw.spool.read(r["id"]) for r in chosen}


def test_released_messages_show_as_released_in_filters_stats_and_dry_run(gw, sink):
    """After release the message stayed `quarantined` everywhere, and --dry-run offered to release it again."""
    rows = seed(gw.spool, 40, files_every=1)
    quarantined = [r["id"] for r in rows if r["state"] == "quarantined"]
    assert len(quarantined) >= 3
    first, rest = quarantined[0], quarantined[1:]
    assert ": released to " in q(gw.config_path, "release", first, check=0).stdout
    sink.wait_for(1)
    released = [m["id"] for m in qjson(gw.config_path, "list", "--released")["messages"]]
    assert released == [first]
    never = {m["id"] for m in qjson(gw.config_path, "list", "--state", "quarantined", "--not-released")["messages"]}
    assert never == set(rest)
    assert re.search(r"%s +(?:%s +)?\S+ +\S+ +quarantined\*" % (first, re.escape(NODE)), q(gw.config_path, "list", "--released", check=0).stdout)
    stats = qjson(gw.config_path, "stats")
    assert stats["released"] == 1 and stats["released_by_state"] == {"quarantined": 1}
    assert "Released:" in q(gw.config_path, "stats", check=0).stdout
    dry = q(gw.config_path, "release", "--all-matching", "--state", "quarantined", "--dry-run", check=0).stdout
    assert "%s: already released" % first in dry and "would not be sent again" in dry
    assert "%s: would be released" % first not in dry
    assert all("%s: would be released" % queue_id in dry for queue_id in rest)
    time.sleep(0.2)
    assert len(sink.messages) == 1


# ---------------------------------------------------------------- export, delete
def test_export_is_byte_identical(gw, sink, tmp_path):
    data = mail("export me", [("x.zip", os.urandom(3000))]).replace(b"Text part.", "Ünïcödé 8-bit".encode())
    send(gw, "alice@x.test", ["bob@y.test"], data)
    row = message_of(sink.wait_for(1)[0])
    out = q(gw.config_path, "export", row.id, text=False)
    assert out.returncode == 0 and out.stdout == data
    target = tmp_path / "copy.eml"
    done = q(gw.config_path, "export", row.id, "-o", str(target), check=0)
    assert target.read_bytes() == data and oct(target.stat().st_mode & 0o777) == "0o600"
    assert "%d bytes written" % len(data) in done.stderr


def test_delete_removes_file_and_every_record(gw, sink):
    row, _ = _quarantined_message(gw)
    q(gw.config_path, "release", row.id, check=0)
    with models.writing():
        FileCheck.create(message=row.id, name="a.pdf", sha256="0" * 64, verdict="clean")
    rows = seed(gw.spool, 8)
    deferred = next(r for r in rows if r["state"] == "deferred")

    out = q(gw.config_path, "delete", row.id, deferred["id"], "0123456789ABCDEF", check=1)
    assert out.stdout.strip() == "%s: deleted (quarantined, 1 file)" % row.id
    assert "%s: still in flight (state deferred): not deleted" % deferred["id"] in out.stderr
    assert "0123456789ABCDEF: no such message" in out.stderr
    assert not gw.spool.exists(row.id)
    for model in (Message,):
        assert not model.select().where(model.id == row.id).exists()
    for model in (Recipient, Event, FileCheck):
        assert not model.select().where(model.message == row.id).exists()
    assert "no such message" in q(gw.config_path, "show", row.id, check=1).stderr
    assert Message.get_by_id(deferred["id"]).state == "deferred"

    q(gw.config_path, "delete", deferred["id"], "--force", check=0)
    assert not Message.select().where(Message.id == deferred["id"]).exists()


# ---------------------------------------------------------------- purge, expire
def test_purge_by_age_never_touches_messages_in_flight(gw):
    now = time.time()
    rows = seed(gw.spool, 200, now, files_every=2)
    old = [r for r in rows if r["created"] < now - 30 * DAY]
    old_final = [r for r in old if r["state"] != "deferred"]
    cfg = gw.config_path

    dry = qjson(cfg, "purge", "--older-than", "30d", "--dry-run")
    assert dry["messages"] == len(old_final) and dry["files"] == sum(r["has_file"] for r in old_final)
    assert Message.select().count() == 200

    held = q(cfg, "purge", "--older-than", "30d", "--state", "held", check=0).stdout
    assert held.startswith("purged %d messages" % sum(r["state"] == "held" for r in old))
    out = q(cfg, "purge", "--older-than", "30d", check=0).stdout
    assert out.startswith("purged %d messages" % (len(old_final) - sum(r["state"] == "held" for r in old)))

    left = {r.id for r in Message.select(Message.id)}
    assert left == {r["id"] for r in rows if r not in old_final}
    assert all(r["id"] in left for r in old if r["state"] == "deferred")       # in flight: untouched
    for r in old_final:
        assert not gw.spool.exists(r["id"])
        assert not Event.select().where(Event.message == r["id"]).exists()
    assert q(cfg, "check", check=0).stdout.startswith("check: OK")


def test_expire_applies_retention_per_state(gw):
    from salmon_app.quarantine.expire import expire
    now = time.time()
    rows = seed(gw.spool, 160, now, files_every=2)
    config = gw.gateway.config.replace(DeliveredRetention=7 * DAY, QuarantineRetention=30 * DAY)
    counts = expire(config, now=now)
    short = ("delivered", "discarded", "dropped", "tempfailed", "closed")
    expected = [r for r in rows if r["state"] != "deferred"
                and r["updated"] < now - (7 * DAY if r["state"] in short else 30 * DAY)]
    assert counts["messages"] == len(expected) > 0
    assert counts["files"] == sum(r["has_file"] for r in expected)
    assert set(counts["by_state"]) == set(SEED_STATES) - {"deferred"}
    left = {r.id for r in Message.select(Message.id)}
    assert left == {r["id"] for r in rows} - {r["id"] for r in expected}
    assert all(r["id"] in left for r in rows if r["state"] == "deferred")
    assert expire(config, now=now)["messages"] == 0


def test_expiry_hook_runs_hourly(monkeypatch):
    from salmon_app.quarantine import expire as expire_module
    calls, clock = [], [1000.0]
    monkeypatch.setattr(expire_module, "expire", lambda config: calls.append(config))
    hook = expire_module.expiry_hook("config", interval=3600, clock=lambda: clock[0])
    for now in (1000.0, 1001.0, 4599.0, 4600.0, 4700.0, 8200.0):
        clock[0] = now
        hook()
    assert len(calls) == 3                      # at once, after an hour, after another hour


# ---------------------------------------------------------------- check
def test_check_and_repair(gw, sink):
    row, _ = _quarantined_message(gw)
    rows = seed(gw.spool, 4, files_every=1)
    os.unlink(gw.spool.path(row.id))                              # removed by hand
    old_orphan, new_orphan = "ABCDEF0123456789", "ABCDEF0123456788"
    gw.spool.store(old_orphan, b"Subject: orphan\r\n\r\nx\r\n")
    gw.spool.store(new_orphan, b"Subject: orphan\r\n\r\ny\r\n")
    # older than check --repair's minute, younger than the hour after which the daemon itself
    # removes orphans on a shared database (expire.remove_orphans)
    os.utime(gw.spool.path(old_orphan), (time.time() - 1800, time.time() - 1800))
    with models.writing():
        Event.create(message="FEDCBA9876543210", time=time.time(), kind="relay", text="left over")

    report = q(gw.config_path, "check", check=1).stdout
    assert "Records whose file is missing: 1" in report and row.id in report
    assert "Files without a record: 2" in report and old_orphan in report
    assert "1 event row(s) without their message" in report
    assert report.rstrip().endswith("run with --repair to fix them")

    repaired = q(gw.config_path, "check", "--repair", check=1).stdout     # the young orphan stays
    assert "-> recorded as without file" in repaired and "-> removed" in repaired
    assert "younger than 60s" in repaired
    assert not Message.get_by_id(row.id).has_file
    assert Event.get(Event.message == row.id, Event.kind == "repair")
    assert not os.path.exists(gw.spool.path(old_orphan)) and os.path.exists(gw.spool.path(new_orphan))
    assert "no stored file to release" in q(gw.config_path, "release", row.id, check=1).stderr
    os.unlink(gw.spool.path(new_orphan))
    assert q(gw.config_path, "check", check=0).stdout.startswith("check: OK (%d records" % (len(rows) + 1))


def test_repair_leaves_a_file_alone_while_its_record_is_kept_in_memory(gw, sink):
    """A full disk: the daemon keeps a message's record in memory, so its file has no row yet.
    A repair then must not remove that "orphan"; once the record is written it is no orphan."""
    import errno
    queue_id = "ABCDEF0123456787"
    gw.spool.store(queue_id, b"Subject: kept\r\n\r\nx\r\n")
    os.utime(gw.spool.path(queue_id), (time.time() - 1800, time.time() - 1800))
    full = threading.Event()
    full.set()

    def record():
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        with models.writing():
            Message.create(id=queue_id, mode="smtp", state="delivered", created=time.time(), updated=time.time(),
                           mail_from="a@x.test", rcpt_json="[]", size=20, sha256="", has_file=True)
    assert gw.gateway.storage.write(queue_id, record, settled=True) is False     # kept in memory
    report = q(gw.config_path, "check", "--repair", check=1).stdout
    assert queue_id in report and "keeps records in memory while its storage fails" in report
    assert os.path.exists(gw.spool.path(queue_id))
    full.clear()                      # space again: the sweeper writes the kept record
    wait_until(lambda: not gw.gateway.storage.failing and not gw.gateway.storage.pending, 10,
               "the kept record to be written")
    assert q(gw.config_path, "check", check=0).stdout.startswith("check: OK")
    assert os.path.exists(gw.spool.path(queue_id)) and Message.get_by_id(queue_id).has_file


def test_repair_removes_old_orphans_once_storage_works(gw, sink):
    """The lock a daemon holds through an outage is let go with it: repair works again."""
    import errno
    orphan = "ABCDEF0123456786"
    gw.spool.store(orphan, b"Subject: orphan\r\n\r\nz\r\n")
    os.utime(gw.spool.path(orphan), (time.time() - 1800, time.time() - 1800))
    gw.gateway.storage.failed(OSError(errno.ENOSPC, "No space left on device"))
    # the lock goes just after ``failing`` clears, in the same sweeper round: wait for the lock
    wait_until(lambda: not gw.gateway.storage.failing and not gw.gateway.storage.kept.held, 10,
               "the sweeper's probe to find storage working and let the lock go")
    repaired = q(gw.config_path, "check", "--repair", check=0).stdout
    assert "-> removed" in repaired and not os.path.exists(gw.spool.path(orphan))


# ---------------------------------------------------------------- stats
def test_stats(gw, sink):
    rows = seed(gw.spool, 50, files_every=5)
    recent = [r for r in rows if r["created"] > time.time() - 7 * DAY]
    with models.writing():
        for i, r in enumerate(recent[:4]):
            FileCheck.create(message=r["id"], name="f.exe", sha256="a" * 64, verdict="clean", cached=i == 3)
        FileCheck.create(message=recent[0]["id"], name="g.exe", sha256="b" * 64, verdict="clean", cached=True)
        FileCheck.create(message=recent[1]["id"], name="h.txt", sha256="c" * 64, verdict="unchecked",
                         reason="not analysable: empty file")
    data = qjson(gw.config_path, "stats", "--since", "7d")
    assert data["messages"] == len(recent)
    assert data["by_state"]["quarantined"]["messages"] == sum(r["state"] == "quarantined" for r in recent)
    assert sum(v["messages"] for v in data["by_verdict"].values()) == len(recent)
    # a: 3 fresh + 1 cached -> 2 waited + 1 cached; b: 1 cached
    assert data["files"]["uploads_saved"] == 4 and data["files"]["cached_verdicts"] == 2
    assert data["files"]["not_analysable"] == 1
    assert data["stored"]["files"] == sum(r["has_file"] for r in rows)
    assert qjson(gw.config_path, "stats", "--since", "all")["messages"] == 50
    text = q(gw.config_path, "stats", check=0).stdout
    assert "Uploads saved by the cache: 4 (2 cached verdicts, 2 waited for a shared analysis)" in text


# ---------------------------------------------------------------- under load
def test_commands_while_mail_flows(gw, sink):
    rows = seed(gw.spool, 60, files_every=1)
    to_release = [r["id"] for r in rows if r["state"] == "quarantined"]
    real = []
    send(gw, "alice@x.test", ["first@y.test"], mail("first"))
    real.append(message_of(sink.wait_for(1)[0]).id)
    replies, errors = [], []
    enough = threading.Event()     # the load goes on until three commands have run beside it

    def load(worker):
        try:
            with gw.client() as client:
                n = 0
                while n < 40 or not enough.is_set():
                    data = mail("load %d-%d" % (worker, n))
                    client.sendmail("load@x.test", ["rcpt%d@y.test" % worker], data)
                    replies.append(n)
                    n += 1
        except Exception as exc:      # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    runs = []
    while any(t.is_alive() for t in threads) or len(runs) < 9:
        kind = len(runs) % 3
        if kind == 0:
            proc = q(gw.config_path, "list", "--limit", "20")
        elif kind == 1:
            proc = q(gw.config_path, "show", real[0])
        elif to_release:
            proc = q(gw.config_path, "release", to_release.pop())
        else:
            proc = q(gw.config_path, "stats")
        runs.append((any(t.is_alive() for t in threads), proc))
        if sum(1 for alive, _ in runs if alive) >= 3:
            enough.set()
    enough.set()
    for t in threads:
        t.join(60)
    sent = len(replies)
    assert not errors and sent >= 320
    during = [p for alive, p in runs if alive]
    assert len(during) >= 3, "the commands should overlap the load"
    print("%d commands, %d during the load of %d messages" % (len(runs), len(during), sent))
    for _, proc in runs:
        assert proc.returncode == 0, (proc.args, proc.stderr)
        assert "locked" not in proc.stderr.lower()
    released = sum(1 for _, p in runs if ": released to " in p.stdout)
    sink.wait_for(1 + sent + released, timeout=30)
    wait_until(lambda: Message.select().where(Message.mode == "smtp", Message.state == "delivered",
                                              Message.mail_from == "load@x.test").count() == sent,
               what="every message delivered")
    assert not Event.select().where(Event.text.contains("internal error")).exists()


# ---------------------------------------------------------------- wiring
def test_register_adds_the_quarantine_command():
    from salmon_app.quarantine.cli import register
    parser = argparse.ArgumentParser(prog="vxgate")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["quarantine", "list", "--state", "quarantined", "-c", "x.ini", "--limit", "3"])
    assert callable(args.func) and args.config == "x.ini" and args.limit == 3
    for command in ("show 0123456789ABCDEF", "release 0123456789ABCDEF --to a@b.test", "export 0123456789ABCDEF -o f",
                    "delete 0123456789ABCDEF", "purge --older-than 30d", "check --repair", "stats --since 7d"):
        assert callable(parser.parse_args(["quarantine"] + command.split() + ["-c", "x.ini"]).func)
