"""Storage faults: a full disk or a database locked by another process never makes vxgate
deliver a message twice, lose one it acknowledged, or leave a client without a reply.

The spool and database live on a real 4 MB tmpfs (needs root, as in CI); the disk is filled
with a real file; the database lock is held by a real second process.
"""
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from salmon_app.storage.models import Event, Message

from test_relay import body, wait_state


def _mount_tmpfs(path, size="4m"):
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", str(path)],
                            capture_output=True, text=True)
    return result.returncode == 0, result.stderr.strip()


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a 4 MB tmpfs, with ``fill()`` and ``free()`` to take and give back its space."""
    path = tmp_path / "small"
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    ok, why = _mount_tmpfs(path)
    if not ok:
        pytest.skip("cannot mount a tmpfs here: %s" % why)

    class Disk:
        root = path
        filler = path / "filler"

        def fill(self):
            # unbuffered: a buffered file's close() would try the last write again, and raise
            with open(self.filler, "ab", buffering=0) as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                except OSError:
                    pass
            # the last blocks: small writes until nothing fits
            with open(self.filler, "ab", buffering=0) as handle:
                try:
                    while True:
                        handle.write(b"\0" * 512)
                except OSError:
                    pass

        def free(self):
            os.unlink(self.filler)
    yield Disk()
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _params(disk):
    return dict(SpoolDir=str(disk.root / "spool"), DatabasePath=str(disk.root / "quarantine.db"))


def _send(gw, n):
    with gw.client() as client:
        client.ehlo()
        client.mail("a@x.test")
        client.rcpt("b@x.test")
        return client.data(body(n))


def _copies(sink, n):
    return [m for m in list(sink.messages) if m.data == body(n)]


def _wait(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def _fill_once(disk):
    """A next hop whose acceptance of the first message coincides with the disk filling up."""
    done = []

    def on_data(msg):
        if not done:
            done.append(msg)
            disk.fill()
    return on_data


def _refused_at_mail(gw):
    client = gw.client()
    client.ehlo()
    code, text = client.mail("c@x.test")
    client.close()
    return code


@pytest.mark.parametrize("first", ["deferred", "fresh"])
def test_disk_full_after_the_next_hop_accepted_delivers_exactly_once(vxgate, sink, small_disk, first):
    gw = vxgate(**_params(small_disk))
    if first == "deferred":          # the reported case: owned, deferred, next hop back, disk full
        sink.stop()
        code, text = _send(gw, 1)
        assert code == 250 and b"deferred" in text
        row = wait_state(Message.mode == "smtp", "deferred")[0]
        sink.on_data = _fill_once(small_disk)
        sink.start()
    else:                            # the client waits: the next hop has it, so it hears 250
        sink.on_data = _fill_once(small_disk)
        code, text = _send(gw, 1)
        assert code == 250 and b"next hop: SINK" in text, (code, text)
        # its record is written only once there is room again, with its outcome
        row = Message(id=text.split(b"queued as ", 1)[1].split()[0].decode())
    _wait(lambda: _copies(sink, 1), 15, "the relay")
    time.sleep(4)       # before the fix: the sweeper relayed it again about once a second
    assert len(_copies(sink, 1)) == 1
    assert gw.gateway.storage.failing and gw.gateway.storage.holds(row.id)
    assert _refused_at_mail(gw) == 451          # Postfix keeps new mail while storage fails
    small_disk.free()
    wait_state(Message.id == row.id, "delivered", timeout=15)
    _wait(lambda: not gw.gateway.storage.failing, 15, "storage to count as working again")
    assert _send(gw, 2)[0] == 250
    time.sleep(1)
    assert len(_copies(sink, 1)) == 1 and len(_copies(sink, 2)) == 1


def test_full_disk_relays_nothing_until_space_returns(vxgate, sink, small_disk):
    gw = vxgate(**_params(small_disk))
    sink.stop()
    assert _send(gw, 1)[0] == 250
    row = wait_state(Message.mode == "smtp", "deferred")[0]
    small_disk.fill()
    sink.start()
    time.sleep(4)
    assert len(_copies(sink, 1)) <= 1
    small_disk.free()
    wait_state(Message.id == row.id, "delivered", timeout=15)
    time.sleep(1)
    assert len(_copies(sink, 1)) == 1


def test_disk_full_during_data_answers_451_at_once_and_recovers(vxgate, sink, small_disk):
    gw = vxgate(**_params(small_disk))
    small_disk.fill()
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 2000    # 2 MB: cannot fit
    with gw.client() as client:
        client.ehlo()
        client.mail("a@x.test")
        client.rcpt("b@x.test")
        started = time.monotonic()
        code, text = client.data(big)
        took = time.monotonic() - started
    assert code == 451 and b"4.3.0" in text, (code, text)
    assert took < 10, took          # before the fix: no reply at all, the client waited 150 s
    assert not os.listdir(small_disk.root / "spool" / "tmp")     # nothing half-stored stays
    small_disk.free()
    _wait(lambda: not gw.gateway.storage.failing, 15, "storage to count as working again")
    assert _send(gw, 3)[0] == 250
    wait_state(Message.mode == "smtp", "delivered", timeout=15)     # the record follows the next hop's 250
    assert len(sink.messages) == 1


_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_database_locked_by_another_process_never_relays_twice(vxgate, sink, tmp_path):
    gw = vxgate(DatabaseBusyTimeout=0.5)
    sink.stop()
    assert _send(gw, 4)[0] == 250
    row = wait_state(Message.mode == "smtp", "deferred")[0]
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(tmp_path / "quarantine.db"), "8"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        sink.start()
        time.sleep(6)       # 12 busy time-outs: before the fix, one more copy per failed record
        assert len(_copies(sink, 4)) <= 1
        assert locker.wait(20) == 0
    finally:
        locker.kill()
    wait_state(Message.id == row.id, "delivered", timeout=15)
    time.sleep(1)
    assert len(_copies(sink, 4)) == 1


def test_internal_errors_on_an_owned_message_are_bounded(vxgate, sink):
    admin = "postmaster@x.test"
    gw = vxgate(SmtpErrorLimit=3, SmtpAdminAddress=admin)
    sink.stop()
    assert _send(gw, 5)[0] == 250
    row = wait_state(Message.mode == "smtp", "deferred")[0]
    os.unlink(gw.gateway.spool.path(row.id))     # every retry now fails inside vxgate
    sink.start()
    held = wait_state(Message.id == row.id, "held", timeout=30)[0]
    errors = Event.select().where(Event.message == row.id, Event.text.startswith("internal error")).count()
    assert errors == 3 and "set aside" in held.reason + " ".join(
        e.text for e in Event.select().where(Event.message == row.id))
    notices = [m for m in sink.wait_for(1, 10) if m.rcpt_tos == [admin]]
    assert len(notices) == 1 and row.id.encode() in notices[0].data
    assert not gw.gateway.storage.failing      # a missing file is not a storage fault


def test_a_deadlock_victim_is_told_from_a_failing_database(pg_cluster):
    """PostgreSQL rolls back one of two deadlocked transactions: vxgate must tell that from an
    unreachable server, so the write runs again instead of the node refusing all mail."""
    import threading

    import psycopg

    from salmon_app.storage.durability import is_storage_error
    from salmon_app.storage.engine import is_conflict
    url = pg_cluster.new_database(schema=False)
    first, second = psycopg.connect(url), psycopg.connect(url)
    try:
        first.execute("CREATE TABLE pair (id int PRIMARY KEY)")
        first.commit()
        first.execute("INSERT INTO pair VALUES (1)")
        second.execute("INSERT INTO pair VALUES (2)")
        errors = []

        def insert(connection, value):
            try:
                connection.execute("INSERT INTO pair VALUES (%s)" % value)
            except psycopg.Error as exc:
                errors.append(exc)
                connection.rollback()
        crossing = threading.Thread(target=insert, args=(first, 2))
        crossing.start()          # first waits for second's row 2, second for first's row 1: a cycle
        insert(second, 1)
        crossing.join(30)
        assert len(errors) == 1 and errors[0].sqlstate == "40P01", errors
        assert is_conflict(errors[0])
    finally:
        first.close()
        second.close()
    with pytest.raises(psycopg.Error) as gone:
        first.execute("SELECT 1")
    assert is_storage_error(gone.value) and not is_conflict(gone.value)     # a connection that is gone


def test_a_write_that_lost_a_deadlock_runs_again_and_a_settled_one_is_never_lost(tmp_path):
    import psycopg

    from salmon_app.pipeline import Registry
    from salmon_app.storage.durability import CONFLICT_RETRIES, StorageGuard
    from salmon_app.storage.spool import Spool
    guard = StorageGuard(Spool(str(tmp_path / "spool")), Registry())
    calls = []

    def once():
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")

    def always():
        calls.append(1)
        raise psycopg.errors.DeadlockDetected("deadlock detected")
    assert guard.write("Q1", once, settled=True) is True and len(calls) == 2 and not guard.failing
    calls.clear()
    # a settled outcome (the next hop took the message) that keeps losing is kept, never raised:
    # raised, it would become a 451 for mail already delivered, and the client would send it again
    assert guard.write("Q2", always, settled=True) is False and guard.holds("Q2")
    assert len(calls) == CONFLICT_RETRIES
    with pytest.raises(psycopg.Error):
        guard.write("Q3", always, settled=False)


def test_mail_the_check_stage_has_no_room_for_is_recorded_at_once_and_goes_out_once(vxgate, sink):
    """A new message's record waits for the next write transaction (models.insert_message);
    one the check stage cannot take is recorded at once, for the sweeper finds mail in the
    database. The one check worker is busy with a slow hook and its queue holds the second
    message: the third one's record (and those before it) must be written at once, not
    after that hook (6 s) or the sweeper's next heartbeat (every 10 s)."""
    gw = vxgate(SmtpWorkers=1, SmtpQueueSize=1, SmtpReplyTimeout=60, SmtpHookTimeout=20, SmtpHook=(
        "calls = 0\nfunction smtp_hook(ctx)\ncalls = calls + 1\nlocal t = os.clock()\n"
        "while calls == 1 and os.clock() - t < 6 do end\nreturn {action = \"accept\"}\nend\n"))
    check = gw.gateway.stages["check"]
    # the sweeper's heartbeat, a write that carries every record along, comes in its second
    # round and then every tenth: all below happens between two of them
    _wait(lambda: gw.gateway.sweeper.rounds >= 2, 30, "the sweeper's first heartbeat")
    errors, senders = [], []

    def send(n):
        def run():
            try:
                _send(gw, n)
            except Exception as exc:
                errors.append((n, exc))
        senders.append(threading.Thread(target=run))
        senders[-1].start()
    send(0)
    _wait(lambda: check.busy == 1 and check.backlog() == 0, 30, "the first message in the worker's hook")
    send(1)
    _wait(lambda: check.backlog() == 1, 30, "the second message in the check queue")
    started = time.monotonic()
    send(2)
    _wait(lambda: Message.select().count() == 3, 4, "the records, while the first hook still runs")
    assert check.busy == 1 and time.monotonic() - started < 4
    for sender in senders:
        sender.join(60)
    assert not errors, errors
    _wait(lambda: all(len(_copies(sink, n)) == 1 for n in range(3)), 30, "every message delivered")
    time.sleep(1.5)     # a sweeper round more: nothing goes out twice
    assert [len(_copies(sink, n)) for n in range(3)] == [1, 1, 1]
