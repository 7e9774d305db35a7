"""Group fsync (salmon_app/storage/groupsync.py) and the daemon's group commit on SQLite.

What matters: a writer is told "durable" only after an fsync that started after its write;
a failed fsync reaches every writer it would have covered; and a transaction whose
``writing()`` returned survives a kill -9 of the process that wrote it."""
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from salmon_app.storage.groupsync import GroupSync


def test_every_waiter_is_covered_by_an_fsync_that_started_after_its_write():
    lock = threading.Lock()
    written = [0]          # writes made so far
    synced = []            # for each fsync: how many writes existed when it started
    gate = threading.Event()

    def fsync():
        with lock:
            synced.append(written[0])
        gate.wait(5)       # a slow disk: the others pile up behind the first fsync

    group = GroupSync(fsync)
    covered = {}

    def writer(number):
        with lock:
            written[0] += 1
            mine = written[0]
            ticket = group.ticket()
        group.wait(ticket)
        covered[number] = (mine, list(synced))
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(covered) == 20
    for mine, syncs in covered.values():
        assert any(start >= mine for start in syncs)       # an fsync that began after this write
    assert len(synced) < 20          # and the writers shared them


def test_a_failed_fsync_reaches_every_writer_it_covered():
    calls = []

    def fsync():
        calls.append(1)
        raise OSError(5, "Input/output error")
    group = GroupSync(fsync)
    errors = []

    def writer():
        try:
            group.sync()
        except OSError as exc:
            errors.append(exc)
    threads = [threading.Thread(target=writer) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 5 and len(calls) == 5       # nobody was told "durable"


CHILD = textwrap.dedent("""
    import os, sys, threading
    from salmon_app.storage import models
    models.open_database(sys.argv[1], group_commit=True)
    lock = threading.Lock()

    def writer(k):
        for n in range(40):
            queue_id = "GC%02d%04dXXXXXXXX" % (k, n)
            with models.writing():
                models.update_message("none", state="x")      # a statement per transaction
                models.log_event(queue_id, "test", "durable")
            with lock:                  # told durable: say so (the parent kills us any time)
                os.write(1, (queue_id + "\\n").encode())
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(1, b"done\\n")
    threading.Event().wait(60)
""")


@pytest.mark.parametrize("after", [50, 200])
def test_kill_9_loses_no_transaction_writing_returned(tmp_path, after):
    database = str(tmp_path / "q.db")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, database], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    acknowledged = []
    try:
        for line in proc.stdout:
            acknowledged.append(line.decode().strip())
            if len(acknowledged) >= after or acknowledged[-1] == "done":
                break
        proc.kill()
        proc.wait(10)
        acknowledged += [line.decode().strip() for line in proc.stdout.read().splitlines()]
    finally:
        if proc.poll() is None:
            proc.kill()
    acknowledged = [a for a in acknowledged if a and a != "done"]
    assert len(acknowledged) >= min(after, 320)
    with sqlite3.connect(database) as conn:
        stored = {row[0] for row in conn.execute("SELECT message FROM event WHERE kind = 'test'")}
    assert set(acknowledged) <= stored


def test_a_deferred_commit_waits_for_no_fsync_of_its_own(tmp_path):
    """``writing(defer=True)`` (a message's record while it is checked and relayed): committed
    at once, durable once any later fsync of the WAL ran: the outcome's commit covers it."""
    from salmon_app.storage import models
    database = models.open_database(str(tmp_path / "q.db"), group_commit=True)
    try:
        group = models._GROUP
        syncs, real = [], group._sync
        group._sync = lambda: (syncs.append(1), real())
        with models.writing(defer=True) as record:
            models.log_event("DEFERRED0001", "test", "record")
        assert syncs == []                     # the writer went on without an fsync
        with models.writing():
            models.log_event("DEFERRED0001", "test", "outcome")
        assert syncs == [1]
        record.wait()
        assert syncs == [1]                    # the outcome's fsync covered the record
    finally:
        database.close()


# ---------------------------------------------------------------- batched write transactions
# The daemon's writers on SQLite share one connection: a writer that ends while others queue
# for the write lock leaves the transaction open, and the last one commits for all of them.

@pytest.fixture
def batched(tmp_path):
    from salmon_app.storage import models
    database = models.open_database(str(tmp_path / "q.db"), group_commit=True)
    commits = []
    models._WRITER.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    yield models, commits
    models.close_writer()
    database.close()


def _stored(models, kind="test"):
    cursor = models.db.obj.execute_sql('SELECT "message" FROM "event" WHERE "kind" = ?', (kind,))
    return sorted(row[0] for row in cursor.fetchall())


class _Failing:
    """The shared connection, with ``fail(sql)`` asked before each statement (it may raise)."""

    def __init__(self, real, fail):
        self.real, self.fail = real, fail

    def __getattr__(self, name):
        return getattr(self.real, name)

    def execute(self, sql, *args):
        self.fail(sql)
        return self.real.execute(sql, *args)


def _two_failing(models, fail):
    """Two writers in one batch (BATCH1, BATCH2) on a shared connection that ``fail`` breaks."""
    real = models._WRITER
    models._WRITER = _Failing(real, fail)
    try:
        return _two_in_one_batch(models, lambda: models.log_event("BATCH1", "test"),
                                 lambda: models.log_event("BATCH2", "test"))
    finally:
        models._WRITER = real


def _two_in_one_batch(models, first_body, second_body):
    """Run two writers so that the second queues while the first is inside its transaction;
    returns {name: the exception each raised, or None}."""
    inside, go, outcome = threading.Event(), threading.Event(), {}

    def first():
        try:
            with models.writing():
                inside.set()
                go.wait(10)
                first_body()
            outcome["first"] = None
        except Exception as exc:
            outcome["first"] = exc

    def second():
        try:
            with models.writing():
                second_body()
            outcome["second"] = None
        except Exception as exc:
            outcome["second"] = exc
    one = threading.Thread(target=first)
    one.start()
    assert inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    for _ in range(1000):           # the second writer queues for the write lock
        if models._QUEUED:
            break
        threading.Event().wait(0.01)
    assert models._QUEUED
    go.set()
    one.join(10)
    two.join(10)
    return outcome


def test_writers_that_queue_meanwhile_share_one_commit(batched):
    models, commits = batched
    outcome = _two_in_one_batch(models, lambda: models.log_event("BATCH1", "test"),
                                lambda: models.log_event("BATCH2", "test"))
    assert outcome == {"first": None, "second": None}
    assert commits == ["COMMIT"]
    assert _stored(models) == ["BATCH1", "BATCH2"]


def test_a_writer_that_fails_takes_back_only_its_own_writes(batched):
    models, commits = batched

    def failing():
        models.log_event("BATCH2", "test")
        raise ValueError("the hook's record is wrong")
    outcome = _two_in_one_batch(models, lambda: models.log_event("BATCH1", "test"), failing)
    assert outcome["first"] is None and isinstance(outcome["second"], ValueError)
    assert _stored(models) == ["BATCH1"]


def test_the_first_writer_of_a_batch_that_fails_takes_back_only_its_own_writes(batched):
    """It writes without a savepoint (nobody else is in the batch yet) and rolls the whole
    transaction back; the writer that queued meanwhile begins a batch of its own."""
    models, commits = batched
    _, record = _record(models, "LATER0000012")

    def failing():
        models.log_event("BATCH1", "test")
        raise ValueError("the hook's record is wrong")
    outcome = _two_in_one_batch(models, failing, lambda: models.log_event("BATCH2", "test"))
    assert isinstance(outcome["first"], ValueError) and outcome["second"] is None
    assert _stored(models) == ["BATCH2"] and commits == ["COMMIT"]
    assert _rows(models, "message", "LATER0000012") == 1       # taken back, then written by the next
    record.wait()


def test_a_commit_that_fails_reaches_every_writer_of_the_batch(batched):
    models, commits = batched
    def disk_full(sql):     # the shared connection, whose COMMIT meets a full disk
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
    outcome = _two_failing(models, disk_full)
    assert all(isinstance(exc, sqlite3.OperationalError) for exc in outcome.values()), outcome
    assert len(outcome) == 2
    assert _stored(models) == []
    with models.writing():          # the next transaction starts cleanly
        models.log_event("BATCH3", "test")
    assert _stored(models) == ["BATCH3"]


def test_a_batch_nobody_commits_is_committed_by_its_writer(batched):
    """A writer counted as queued that never comes (it cannot happen, but a hang would be the
    price): the waiting writer commits the batch itself after a second."""
    models, commits = batched
    models._QUEUED.append(None)
    try:
        with models.writing():
            models.log_event("BATCH1", "test")
    finally:
        models._QUEUED.pop()
    assert commits == ["COMMIT"]
    assert _stored(models) == ["BATCH1"]


def test_a_savepoint_that_fails_undoes_nobody_elses_writes(batched):
    """The second writer's SAVEPOINT fails: a ROLLBACK TO w would then have undone the first
    writer's part (savepoints of one name nest); only the second writer is told it failed."""
    models, commits = batched
    seen = []

    def second_savepoint(sql):
        if sql == "SAVEPOINT w":        # the first writer of a batch makes none (it has it alone)
            seen.append(sql)
            raise sqlite3.OperationalError("out of memory")
    outcome = _two_failing(models, second_savepoint)
    assert outcome["first"] is None and isinstance(outcome["second"], sqlite3.OperationalError)
    assert _stored(models) == ["BATCH1"]
    with models.writing():          # and that thread's next write is a transaction of its own
        models.log_event("BATCH3", "test")
    assert _stored(models) == ["BATCH1", "BATCH3"]


# ---------------------------------------------------------------- a new message's record
# insert_message(defer=True), the session's record of a message it just received, is written
# by the next write transaction (usually the one that records the message's outcome).

def _record(models, queue_id, defer=True):
    now = 1e9
    return models.insert_message(dict(id=queue_id, mode="smtp", state=models.STORED, created=now, updated=now,
                                      mail_from="a@x.test", rcpt_json='["b@y.test"]', size=10, sha256="0" * 64),
                                 ["b@y.test"], defer=defer)


def _rows(models, table, queue_id):
    column = "id" if table == "message" else "message"
    cursor = models.db.obj.execute_sql('SELECT COUNT(*) FROM "%s" WHERE "%s" = ?' % (table, column), (queue_id,))
    return cursor.fetchone()[0]


def test_a_new_message_record_is_written_by_the_next_transaction_before_its_statements(batched):
    models, commits = batched
    row, record = _record(models, "LATER0000001")
    assert row.id == "LATER0000001" and _rows(models, "message", row.id) == 0    # nothing written yet
    with models.writing():
        models.set_state(row.id, models.RELAYING, "checked")      # finds the row: written first
    assert commits == ["COMMIT"]                   # one transaction for both
    state = models.db.obj.execute_sql('SELECT "state" FROM "message" WHERE "id" = ?', (row.id,)).fetchone()
    assert state == (models.RELAYING,) and _rows(models, "recipient", row.id) == 1
    record.wait()                                  # durable with it: no transaction of its own
    assert commits == ["COMMIT"]


def test_the_mode_of_a_message_whose_record_waits_is_known(batched):
    # /metrics counts an outcome by mode: a message that failed before its record was written
    # (or while storage fails) was counted as mode "unknown"
    models, commits = batched
    row, record = _record(models, "LATER0000009")
    assert _rows(models, "message", row.id) == 0 and models.mode_of(row.id) == "smtp"
    record.wait()
    assert models.mode_of(row.id) == "smtp" and models.mode_of("NOSUCH000001") == "unknown"


def test_a_record_no_transaction_wrote_is_written_by_its_wait(batched):
    models, commits = batched
    row, record = _record(models, "LATER0000002")
    syncs, real = [], models._GROUP._sync
    models._GROUP._sync = lambda: (syncs.append(1), real())
    record.wait()
    assert _rows(models, "message", row.id) == 1 and commits == ["COMMIT"] and syncs == [1]


@pytest.mark.parametrize("breaks", ['INSERT INTO "message"', "COMMIT"])
def test_records_a_failed_transaction_took_along_are_kept_for_the_next(batched, breaks):
    """A full disk while the records are written, or at the COMMIT that would have made them
    durable: the transaction fails for its writer, and the records wait for the next one."""
    models, commits = batched
    first, first_record = _record(models, "LATER0000003")
    second, second_record = _record(models, "LATER0000004")

    def disk_full(sql):
        if sql.startswith(breaks):
            raise sqlite3.OperationalError("database or disk is full")
    real = models._WRITER
    models._WRITER = _Failing(real, disk_full)
    try:
        with pytest.raises(sqlite3.OperationalError):
            with models.writing():
                models.log_event("LATER0000005", "test")
    finally:
        models._WRITER = real
    assert [_rows(models, "message", r.id) for r in (first, second)] == [0, 0] and _stored(models) == []
    assert [r.batch for r in models._RECORDS] == [None, None]
    assert list(models._RECORDS) == [first_record, second_record]     # in their order
    with models.writing():
        models.set_state(second.id, models.RELAYING, "checked")
    first_record.wait()
    second_record.wait()
    assert [_rows(models, "message", r.id) for r in (first, second)] == [1, 1]
    assert models.db.obj.execute_sql('SELECT "state" FROM "message" WHERE "id" = ?', (second.id,)).fetchone() == (
        models.RELAYING,)


def test_a_record_that_can_never_be_written_holds_up_no_other(batched):
    models, commits = batched
    _record(models, "LATER0000006", defer=False)        # already there: the same id cannot be written again
    _, broken = _record(models, "LATER0000006")
    fine, record = _record(models, "LATER0000007")
    with models.writing():
        models.log_event(fine.id, "test")
    record.wait()
    assert _rows(models, "message", fine.id) == 1 and not models._RECORDS
    with pytest.raises(sqlite3.IntegrityError):
        broken.wait()


def test_closing_the_database_forgets_the_records_of_unanswered_messages(batched):
    models, commits = batched
    _, record = _record(models, "LATER0000008")
    models.close_writer()
    assert not models._RECORDS
    with pytest.raises(sqlite3.InterfaceError, match="closed before"):
        record.wait()


def test_a_record_of_a_message_refused_after_all_is_never_written(batched):
    models, commits = batched
    _, refused = _record(models, "LATER0000009")
    kept, record = _record(models, "LATER0000010")
    refused.forget()                    # e.g. 451: the check stage was full and storage failed
    record.wait()
    assert _rows(models, "message", "LATER0000009") == 0 and _rows(models, "message", kept.id) == 1
    record.forget()                     # written already: nothing to take back, and no error
    assert _rows(models, "message", kept.id) == 1


def test_forget_says_when_a_transaction_took_the_record_already(batched):
    """The session's 451 path: a record another thread's transaction wrote meanwhile cannot be
    taken back (Intake.accept then records the message as dropped instead)."""
    models, commits = batched
    row, record = _record(models, "LATER0000011")
    with models.writing():
        models.log_event("OTHER0000001", "test")
    assert record.forget() is False and _rows(models, "message", row.id) == 1


def test_writers_behind_one_that_waited_in_vain_for_the_lock_wait_briefly(tmp_path):
    """Another process holds the write lock: the first writer waits the whole busy time-out,
    the ones after it only briefly (each waiting the whole time-out in turn would keep the
    sessions behind them for minutes); the first success restores the full wait."""
    import fcntl
    import time
    from salmon_app.storage import models
    database = models.open_database(str(tmp_path / "q.db"), group_commit=True, several=True, busy_timeout=1.0)
    holder = os.open(str(tmp_path / "q.db.writer"), os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        waits = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                with models.writing():
                    models.log_event("LOCKED000001", "test")
            waits.append(time.monotonic() - started)
        assert waits[0] >= 0.9 and max(waits[1:]) < 0.6, waits
        fcntl.flock(holder, fcntl.LOCK_UN)
        with models.writing():
            models.log_event("LOCKED000001", "test")
        assert models._LOCKED_OUT is False
        assert models._WRITER.execute("PRAGMA busy_timeout").fetchone() == (1000,)
    finally:
        os.close(holder)
        models.close_writer()
        database.close()


# ---------------------------------------------------------------- the outcome of a delivery

def _fsync_waits(models):
    """Names of the threads that wait for an fsync of the WAL from now on."""
    waits, real = [], models._GROUP.wait

    def wait(ticket):
        waits.append(threading.current_thread().name)
        return real(ticket)
    models._GROUP.wait = wait
    return waits


def test_a_delivery_told_to_its_session_waits_for_no_fsync_one_finished_later_does(vxgate, sink):
    """The next hop has the message: its records need no fsync before the 250, since losing
    them (a power cut) only leaves a record never answered or a file without one, both removed
    at start-up. A delivery that ends after the session was answered (SmtpReplyTimeout) is
    different: its record is all that says the message is done, so it is fsynced first."""
    from salmon_app.storage import models
    from salmon_app.storage.models import Message
    from tests.support.waiting import wait_until
    gw = vxgate(SmtpReplyTimeout=3.0)    # a new gateway's first message took 0.5 s on a slow day
    waits = _fsync_waits(models)
    gw.send("a@x.test", ["b@y.test"], b"Subject: told\r\n\r\nbody\r\n")
    assert len(sink.messages) == 1
    told = Message.get(Message.subject == "told")
    assert told.state == models.DELIVERED and not told.has_file and not told.answered
    # neither the relay thread nor the session waited for the WAL (nor for the record's fsync)
    assert [name for name in waits if name.startswith(("relay", "smtp-session"))] == []

    release = threading.Event()
    sink.data_reply = lambda message: (release.wait(10), None)[1]
    gw.send("a@x.test", ["b@y.test"], b"Subject: later\r\n\r\nbody\r\n")   # 250 after 3 s
    later = Message.get(Message.subject == "later")
    assert later.answered and later.state != models.DELIVERED
    del waits[:]
    release.set()
    wait_until(lambda: Message.get_by_id(later.id).state == models.DELIVERED, what="the later delivery")
    wait_until(lambda: not os.path.exists(gw.gateway.spool.path(later.id)), what="its file removed")
    assert [name for name in waits if name.startswith("relay")], waits


def test_messages_received_together_share_a_spool_folder_and_its_fsync(vxgate, sink, monkeypatch):
    """The queue id's first two digits name the spool folder and turn with the time: a burst of
    mail lands in one folder (two at a turn), so the renames behind one folder fsync are made
    durable by the next one. With random ids every message had a folder, and an fsync, of its own."""
    from salmon_app.outbox import FOLDER_SECONDS, new_queue_id
    from salmon_app.storage import groupsync
    from salmon_app.storage.models import Message
    from tests.support.gateway import send_at_once
    gw = vxgate()
    spool = os.path.realpath(gw.gateway.spool.directory)
    folder_syncs, real = [], groupsync.fsync_path

    def slow_folder_fsync(path, *args, **kw):
        if os.path.dirname(os.path.realpath(path)) == spool:
            folder_syncs.append(os.path.basename(path))
            threading.Event().wait(0.3)      # a slow disk: the other sessions rename meanwhile
        return real(path, *args, **kw)
    monkeypatch.setattr(groupsync, "fsync_path", slow_folder_fsync)
    count = 8
    errors = send_at_once(lambda n: gw.send("a@x.test", ["b@y.test"], b"Subject: burst %d\r\n\r\nbody\r\n" % n), count)
    assert errors == []
    ids = [m.id for m in Message.select().where(Message.subject.startswith("burst"))]
    assert len(ids) == count and len(sink.messages) == count
    assert len({i[:2] for i in ids}) <= 2
    assert 1 <= len(folder_syncs) <= 4, folder_syncs

    assert new_queue_id(now=8.0)[:2] == new_queue_id(now=8.0 + FOLDER_SECONDS - 0.01)[:2] == "02"
    assert new_queue_id(now=8.0 + FOLDER_SECONDS)[:2] == "03"
    assert new_queue_id(now=256 * FOLDER_SECONDS)[:2] == "00"
    ids = {new_queue_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 16 and int(i, 16) >= 0 and i == i.upper() for i in ids)
