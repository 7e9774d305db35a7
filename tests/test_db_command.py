"""``vxgate db upgrade|status|copy`` run as an administrator would, against the suite's own PostgreSQL.

Each command is a separate process (``python -m salmon_app.cli db ...``) with a configuration
file. The SQLite quarantine that ``copy`` moves was filled by a real gateway over SMTP (EICAR
analysed by the vxCube emulator and quarantined by the hook), or, for the bulk and the
interrupted copy, with records and spool files written through the models and the spool.
What is checked is what an administrator would look at: exit status, the one-line error
(never the password), the rows in PostgreSQL, and ``vxgate quarantine export`` on another node
giving back the very bytes that were received.
"""
import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from salmon_app.storage import migrations, models
from salmon_app.storage.models import Message
from salmon_app.storage.spool import Spool
from support.mail import EICAR, mail_with, pe_image, vxcube_params
from support.pgcluster import PASSWORD, free_port
from test_quarantine import seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUARANTINE_DANGEROUS = """
function smtp_hook(ctx)
  if ctx.vxcube.verdict == "dangerous" then
    return {action = "quarantine", message = "dangerous attachment"}
  end
  return {action = "accept"}
end
"""


def vx(*args, config=None, check=None, timeout=300):
    """Run ``vxgate ARGS`` in its own process; a user's mistake never shows a traceback."""
    argv = [sys.executable, "-m", "salmon_app.cli", *args] + (["-c", str(config)] if config else [])
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ini(path, **values):
    """A configuration file; values are {"Section.Name": value}."""
    sections = {}
    for key, value in values.items():
        section, name = key.split(".")
        sections.setdefault(section, []).append("%s = %s" % (name, value))
    path.write_text("".join("[%s]\n%s\n" % (s, "\n".join(lines)) for s, lines in sections.items()))
    return path


def rows(url, sql):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def count(url, table):
    return rows(url, 'SELECT COUNT(*) FROM "%s"' % table)[0][0]


@pytest.fixture
def bound():
    """Restore the process's database binding after a test that binds models.db itself."""
    previous = models.db.obj
    yield
    if models.db.obj is not None and models.db.obj is not previous:
        models.db.obj.close()
    models.db.initialize(previous)


def sqlite_quarantine(tmp_path, n):
    """A node's SQLite quarantine of ``n`` seeded messages (every 4th with its file); (path, spool dir)."""
    path = str(tmp_path / "node.db")
    database = models.open_database(path)
    try:
        seed(Spool(str(tmp_path / "spool")), n)
    finally:
        database.close()
    return path, str(tmp_path / "spool")


# ---------------------------------------------------------------- upgrade and status
def test_upgrade_creates_the_schema_once_and_status_shows_it(pg_cluster, tmp_path):
    url = pg_cluster.new_database(schema=False)
    config = ini(tmp_path / "pg.ini", **{"Quarantine.DatabaseUrl": url, "Root.NodeName": "alpha"})

    status = vx("db", "status", config=config, check=1)
    assert "no vxgate tables yet" in status.stdout and "vxgate db upgrade" in status.stdout

    first = vx("db", "upgrade", config=config, check=0)
    assert "applying schema 1:" in first.stdout
    assert "schema none -> %d (current)" % migrations.CURRENT in first.stdout
    assert rows(url, "SELECT version FROM vxgate_schema") == [(migrations.CURRENT,)]
    assert PASSWORD not in first.stdout + first.stderr and ":***@" in first.stdout

    again = vx("db", "upgrade", config=config, check=0)
    assert "already at schema %d" % migrations.CURRENT in again.stdout and "applying" not in again.stdout

    status = vx("db", "status", config=config, check=0)
    assert "engine:   postgresql (PostgreSQL " in status.stdout
    assert "schema:   %d (the one this vxgate needs)" % migrations.CURRENT in status.stdout
    assert PASSWORD not in status.stdout


def test_daemon_open_of_an_unupgraded_database_names_the_command(pg_cluster, bound):
    url = pg_cluster.new_database(schema=False)
    with pytest.raises(migrations.SchemaError) as raised:
        models.open_database(url)
    assert "vxgate db upgrade" in str(raised.value) and PASSWORD not in str(raised.value)
    assert rows(url, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]   # nothing created


def test_an_older_schema_is_refused_then_upgraded_step_by_step(pg_cluster, tmp_path, bound):
    """A database of the first versioned release (schema 1, before the web console's table)."""
    url = pg_cluster.new_database()
    rows(url, "UPDATE vxgate_schema SET version = 1 RETURNING version")
    pg_cluster.sql("DROP TABLE web_release_request", url.rsplit("/", 1)[1])
    with pytest.raises(migrations.SchemaError) as raised:
        models.open_database(url)
    assert "at schema 1 and this vxgate needs %d: run `vxgate db upgrade`" % migrations.CURRENT in str(raised.value)
    config = ini(tmp_path / "pg.ini", **{"Quarantine.DatabaseUrl": url})
    upgraded = vx("db", "upgrade", config=config, check=0)
    assert "applying schema 2:" in upgraded.stdout and "applying schema 1" not in upgraded.stdout
    assert rows(url, "SELECT COUNT(*) FROM web_release_request") == [(0,)]
    models.open_database(url)       # the daemon starts now


def test_a_schema_newer_than_this_vxgate_is_refused(pg_cluster, tmp_path, bound):
    url = pg_cluster.new_database()
    rows(url, "UPDATE vxgate_schema SET version = %d RETURNING version" % (migrations.CURRENT + 1))
    config = ini(tmp_path / "pg.ini", **{"Quarantine.DatabaseUrl": url})

    refused = vx("db", "upgrade", config=config, check=1)
    assert refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    assert "newer than this vxgate knows" in refused.stderr and "upgrade vxgate" in refused.stderr
    assert rows(url, "SELECT version FROM vxgate_schema") == [(migrations.CURRENT + 1,)]   # left alone
    assert "newer than this vxgate knows" in vx("db", "status", config=config, check=1).stdout
    with pytest.raises(migrations.SchemaError, match="upgrade vxgate"):
        models.open_database(url)


def test_wrong_address_or_password_is_one_line_without_the_password(pg_cluster, tmp_path):
    good = pg_cluster.new_database()
    wrong_password = good.replace(PASSWORD, "Not-The-Password-93")
    closed_port = good.replace(":%d/" % pg_cluster.port, ":%d/" % free_port())
    no_database = good.rsplit("/", 1)[0] + "/no_such_db"
    cases = [(wrong_password, "password authentication failed", "check the user and password in DatabaseUrl"),
             (closed_port, "Connection refused", "listen_addresses"),
             (no_database, 'database "no_such_db" does not exist', "createdb")]
    for url, reason, fix in cases:
        config = ini(tmp_path / "bad.ini", **{"Quarantine.DatabaseUrl": url})
        for command in ("upgrade", "status"):
            proc = vx("db", command, config=config, check=1)
            assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert reason in proc.stderr and fix in proc.stderr, proc.stderr
            assert "Not-The-Password-93" not in proc.stderr and PASSWORD not in proc.stderr
            assert "cannot connect to postgresql://postgres:***@127.0.0.1:" in proc.stderr
    copy = vx("db", "copy", "--from", "sqlite:///%s" % (tmp_path / "none.db"), "--to", wrong_password,
              "--spool", str(tmp_path), "--node", "n", check=2)
    assert "no SQLite database at" in copy.stderr


# ---------------------------------------------------------------- copy
def test_copy_moves_an_smtp_quarantine_and_another_node_exports_it(vxgate, vxsim, sink, pg_cluster, tmp_path):
    gw = vxgate(**vxcube_params(vxsim), SmtpHook=QUARANTINE_DANGEROUS, KeepDeliveredMessages=True, NodeName="alpha")
    dangerous = mail_with([("invoice.exe", pe_image(EICAR))], subject="quarterly invoice")
    clean = mail_with([("tool.exe", pe_image(b"nothing to see"))], subject="the tool")
    gw.send("a@x.test", ["b@x.test", "c@x.test"], dangerous)
    gw.send("a@x.test", ["d@x.test"], clean)
    sink.wait_for(1, 30)
    deadline = time.time() + 30
    while time.time() < deadline and sorted(m.state for m in Message.select()) != ["delivered", "quarantined"]:
        time.sleep(0.05)
    kept = {m.state: m for m in Message.select()}
    assert sorted(kept) == ["delivered", "quarantined"], [(m.id, m.state) for m in Message.select()]
    gw.stop()
    spool = tmp_path / "spool"
    received = {state: Spool(str(spool)).read(m.id) for state, m in kept.items()}

    url = pg_cluster.new_database()
    source = "sqlite:///%s" % (tmp_path / "quarantine.db")
    copy = vx("db", "copy", "--from", source, "--to", url, "--spool", str(spool), check=0,
              config=ini(tmp_path / "alpha.ini", **{"Root.NodeName": "alpha"}))
    assert "verified: every table's rows are at the target; 2 bodies' SHA-256 match" in copy.stdout, copy.stdout
    assert PASSWORD not in copy.stdout + copy.stderr
    assert count(url, "message") == 2 and count(url, "body") == 2
    assert count(url, "recipient") == 3 and count(url, "filecheck") == 2 and count(url, "sample") >= 1
    assert {r[0] for r in rows(url, "SELECT node FROM message")} == {"alpha"}
    assert count(url, "event") == models.Event.select().count() > 0

    # node beta, with an empty spool of its own, reads the quarantined message from PostgreSQL
    beta = ini(tmp_path / "beta.ini", **{"Quarantine.DatabaseUrl": url, "Quarantine.SpoolDir": tmp_path / "beta-spool",
                                         "Root.NodeName": "beta"})
    quarantined = kept["quarantined"].id
    out = tmp_path / "exported.eml"
    vx("quarantine", "export", quarantined, "-o", str(out), config=beta, check=0)
    assert out.read_bytes() == received["quarantined"]
    shown = vx("quarantine", "show", quarantined, "--json", config=beta, check=0)
    info = json.loads(shown.stdout)
    assert info["state"] == "quarantined" and "quarterly invoice" in shown.stdout

    again = vx("db", "copy", "--from", source, "--to", url, "--spool", str(spool), "--node", "alpha", check=0)
    assert "copied 0 messages (2 already there" in again.stdout
    assert count(url, "message") == 2 and count(url, "recipient") == 3 and count(url, "body") == 2


def test_interrupted_copy_resumes_complete_without_duplicates(pg_cluster, tmp_path, bound):
    path, spool = sqlite_quarantine(tmp_path, 240)
    url = pg_cluster.new_database()
    argv = [sys.executable, "-m", "salmon_app.cli", "db", "copy", "--from", path, "--to", url,
            "--spool", spool, "--node", "alpha", "--batch", "1"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any(line.startswith("copied 5 of 240") for line in lines):
            line = proc.stdout.readline()
            assert line, (lines, proc.stderr.read())
            lines.append(line)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    partly = count(url, "message")
    assert 5 <= partly < 240

    resumed = vx("db", "copy", "--from", path, "--to", url, "--spool", spool, "--node", "alpha", check=0)
    assert "copied %d messages (%d already there" % (240 - partly, partly) in resumed.stdout, resumed.stdout
    assert "verified:" in resumed.stdout
    import sqlite3
    con = sqlite3.connect(path)
    for table in ("message", "recipient", "event"):
        expected = con.execute('SELECT COUNT(*) FROM "%s"' % table).fetchone()[0]
        assert count(url, table) == expected, table
    per_message = dict(con.execute('SELECT "message", COUNT(*) FROM "recipient" GROUP BY "message"'))
    assert dict(rows(url, 'SELECT message, COUNT(*) FROM recipient GROUP BY message')) == per_message
    with_files = con.execute('SELECT COUNT(*) FROM "message" WHERE "has_file"').fetchone()[0]
    assert count(url, "body") == with_files == 60
    assert rows(url, "SELECT COUNT(*) FROM body b JOIN message m ON m.id = b.message "
                     "WHERE m.sha256 <> b.sha256") == [(0,)]


def test_copy_needs_the_schema_and_never_overwrites_another_message(pg_cluster, tmp_path, bound):
    path, spool = sqlite_quarantine(tmp_path, 12)
    empty = pg_cluster.new_database(schema=False)
    args = ("db", "copy", "--from", path, "--spool", spool, "--node", "alpha")
    wrong = vx(*args, "--to", empty.replace(PASSWORD, "Not-The-Password-93"), check=1)
    assert len(wrong.stderr.strip().splitlines()) == 1 and "password authentication failed" in wrong.stderr
    assert "Not-The-Password-93" not in wrong.stdout + wrong.stderr and "--to" in wrong.stderr
    # the source's daemon still runs (it holds its state lock): nothing is copied
    from salmon_app.service import lock_state
    held = lock_state(path + ".lock")
    try:
        running = vx(*args, "--to", empty, "--upgrade", check=1)
    finally:
        os.close(held)
    assert running.stderr.strip() == ("vxgate db copy: the vxgate using %s is running (pid %d, lock %s.lock): "
                                      "stop it first (salmon stop), then copy" % (path, os.getpid(), path)), running.stderr
    assert rows(empty, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    refused = vx(*args, "--to", empty, check=1)
    assert "run `vxgate db upgrade` with DatabaseUrl = postgresql://postgres:***@" in refused.stderr
    assert PASSWORD not in refused.stderr
    assert rows(empty, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    upgraded = vx(*args, "--to", empty, "--upgrade", check=0)
    assert "applying schema 1:" in upgraded.stdout and count(empty, "message") == 12

    # the same message in another state (the source moved on since): replaced as a whole
    stale = rows(empty, "SELECT id, state FROM message ORDER BY id LIMIT 1 OFFSET 2")[0]
    rows(empty, "UPDATE message SET state = 'failed' WHERE id = '%s' RETURNING id" % stale[0])
    rows(empty, "DELETE FROM event WHERE message = '%s' RETURNING id" % stale[0])
    again = vx(*args, "--to", empty, check=0)
    assert "copied 1 messages (11 already there, 1 replaced" in again.stdout, again.stdout
    assert rows(empty, "SELECT state FROM message WHERE id = '%s'" % stale[0]) == [(stale[1],)]
    assert count(empty, "event") == 12 and count(empty, "recipient") == 15

    # another node's message under one of these ids (received at another time) is never overwritten
    victim = rows(empty, "SELECT id FROM message ORDER BY id LIMIT 1 OFFSET 5")[0][0]
    rows(empty, "UPDATE message SET node = 'gamma', created = 1, state = 'delivered' WHERE id = '%s' RETURNING id" % victim)
    conflict = vx(*args, "--to", empty, check=1)
    assert victim in conflict.stderr and "another message with this id" in conflict.stderr
    assert len(conflict.stderr.strip().splitlines()) == 1
    assert rows(empty, "SELECT node, created FROM message WHERE id = '%s'" % victim) == [("gamma", 1.0)]
    assert count(empty, "message") == 12
