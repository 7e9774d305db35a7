"""Several vxgate nodes sharing one PostgreSQL, as a site runs them behind Postfix.

Each node is a real daemon (``salmon start --no-daemon`` with its own configuration file,
SpoolDir, NodeName and SmtpSocket, and the same DatabaseUrl) relaying to a real next hop; the
vxCube emulator answers over HTTP. One node runs in this process where the test must watch
its sweeper's rounds. What is checked is what an administrator would check: the emulator's
upload count, what each next hop received (once per message), ``vxgate quarantine`` output,
and the records and history in the shared database.
"""
import smtplib
import subprocess
import threading
import time

import pytest

from support import pgcluster
from support.daemon import SALMON
from support.gateway import Running, make_config, send_at_once
from support.mail import EICAR, ROOT, mail_with, pe_image, vxcube_params
from support.sink import SinkServer
from support.waiting import wait_until

from salmon_app.storage import engine, models
from salmon_app.storage.models import Event, Message

pytestmark = pytest.mark.slow

@pytest.fixture
def shared_db(pg_cluster):
    """A fresh shared database, bound in this process too so the test can read the records."""
    url = pg_cluster.new_database()
    previous = models.db.obj
    database = models.open_database(url)
    yield url
    models.db.obj.close_all()        # this test's gateway in this process may have opened its own
    database.close_all()
    models.db.initialize(previous)


@pytest.fixture
def sink_b():
    server = SinkServer()
    server.start()
    yield server
    server.stop()


def numbered(data_or_n, text=b""):
    return (b"From: load@x.test\r\nTo: r@x.test\r\nSubject: load %d\r\nMessage-ID: <%d@load.test>\r\n\r\n%s\r\n"
            % (data_or_n, data_or_n, text))


def number_of(sink_message):
    return int(sink_message.data.split(b"Subject: load ", 1)[1].split(b"\r\n", 1)[0])


def counts(sink):
    found = {}
    for message in list(sink.messages):
        found[number_of(message)] = found.get(number_of(message), 0) + 1
    return found


# ---------------------------------------------------------------- one upload for both nodes
def test_one_attachment_over_two_nodes_is_uploaded_once(tmp_path, shared_db, nodes, sink, vxsim):
    params = dict(vxcube_params(vxsim), SmtpReplyTimeout=0.5)
    a = nodes(tmp_path / "a", "node-a", shared_db, sink.port, **params).start()
    b = nodes(tmp_path / "b", "node-b", shared_db, sink.port, **params).start()
    payload = pe_image(b"one attachment for every node")
    errors = send_at_once(lambda n: (a, b)[n % 2].send(mail_with([("same.exe", payload)], subject="load %d" % n)), 100)
    assert not errors
    try:
        wait_until(lambda: Message.select().where(Message.state == "delivered").count() == 100, 90,
                 "100 records delivered")
    except AssertionError:
        raise AssertionError([(r.id, r.node, r.state, r.analysis_json, [(e.kind, e.text) for e in Event.select().where(Event.message == r.id)])
                              for r in Message.select().where(Message.state != "delivered")])
    sink.wait_for(100, 10)
    assert sorted(counts(sink).items()) == [(n, 1) for n in range(100)]
    stats = vxsim.stats()
    assert stats["uploads"] == 1 and stats["upload_requests"] == 1, stats
    by_node = {node: Message.select().where(Message.node == node).count() for node in ("node-a", "node-b")}
    assert by_node == {"node-a": 50, "node-b": 50}
    assert {row.verdict for row in Message.select()} == {"clean"}


# ---------------------------------------------------------------- quarantine on A, release from B
DANGEROUS_HOOK = """function smtp_hook(ctx)
  if ctx.vxcube.has_verdict("dangerous") then return {action = "quarantine", message = "dangerous"} end
  return {action = "accept"}
end
"""


def test_quarantined_on_one_node_released_from_the_other(tmp_path, shared_db, nodes, sink, sink_b, vxsim):
    hook = tmp_path / "hook.lua"
    hook.write_text(DANGEROUS_HOOK)
    a = nodes(tmp_path / "a", "node-a", shared_db, sink.port, SmtpHook=str(hook), **vxcube_params(vxsim)).start()
    b = nodes(tmp_path / "b", "node-b", shared_db, sink_b.port)    # B's commands need no running daemon
    data = mail_with([("invoice.exe", pe_image(EICAR))], subject="quarantined on A")
    a.send(data)
    row = wait_until(lambda: Message.get_or_none(Message.state == "quarantined"), 30, "the quarantine")
    assert row.node == "node-a" and not sink.messages

    listed = b.vxgate("quarantine", "list").splitlines()
    assert "NODE" in listed[0] and any(row.id in line and "node-a" in line for line in listed[1:])
    out = b.vxgate("quarantine", "release", row.id)
    assert out.startswith("%s: released to bob@x.test" % row.id), out
    [released] = sink_b.wait_for(1, 30)
    assert released.data == data                         # byte for byte, from the shared database
    assert released.mail_from == "alice@x.test" and released.rcpt_tos == ["bob@x.test"]
    assert not sink.messages                             # through B's next hop, not A's
    assert Event.get(Event.message == row.id, Event.kind == "released")


# ---------------------------------------------------------------- kill -9 of one node
def test_a_killed_node_keeps_its_messages_and_resumes_them(tmp_path, shared_db, nodes, sink, sink_b):
    """A's next hop refuses DATA for now (451), so A holds acknowledged messages in flight when it
    is killed; B runs in this process so the test can count its sweeper rounds."""
    from salmon.routing import Router
    import config.testing  # noqa: F401  (the handlers, as the vxgate fixture loads them)
    from salmon_app.gateway import Gateway

    sink.data_reply = (451, "4.3.0 busy, come back later")
    a = nodes(tmp_path / "a", "node-a", shared_db, sink.port, SmtpReplyTimeout=0.02).start()
    gateway = Gateway(make_config(tmp_path / "b", sink_b.port, DatabaseUrl=shared_db, NodeName="node-b",
                                  SmtpReplyTimeout=0.02), Router)
    gateway.start()
    b = Running(gateway)
    targets = {"a": a.port, "b": b.port}
    acked, tried, lock, stop = {}, {}, threading.Lock(), threading.Event()
    counter = iter(range(10 ** 6))

    def load():
        while not stop.is_set():
            with lock:
                n = next(counter)
            node = "ab"[n % 2]
            tried[n] = node
            try:
                with smtplib.SMTP("127.0.0.1", targets[node], timeout=10) as client:
                    client.sendmail("load@x.test", ["r@x.test"], numbered(n))
                acked[n] = node
            except (OSError, smtplib.SMTPException):
                pass        # not acknowledged: the sending MTA keeps it
    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()

        def a_holds_acknowledged_mail():
            return Message.select().where(Message.node == "node-a", Message.answered == True,  # noqa: E712
                                          Message.state.in_(models.IN_FLIGHT)).count() >= 20
        wait_until(a_holds_acknowledged_mail, 60, "node A to hold 20 acknowledged messages")
        a.kill()
        a_rows = {r.id: (r.state, r.node, r.answered, r.updated, r.attempts)
                  for r in Message.select().where(Message.node == "node-a")}
        last_event = Event.select(Event.id).order_by(Event.id.desc()).first().id
        a_attempts = len(sink.attempts)
        # B keeps taking mail and sweeping, its shared-database look at ANALYSING included (every 5 rounds)
        rounds = b.gateway.sweeper.rounds
        wait_until(lambda: b.gateway.sweeper.rounds >= rounds + 11, 60, "eleven rounds of B's sweeper")
        wait_until(lambda: sum(1 for n, node in list(acked.items()) if node == "b") >= 40, 60, "B to take mail")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    try:
        assert {r.id: (r.state, r.node, r.answered, r.updated, r.attempts)
                for r in Message.select().where(Message.id.in_(list(a_rows)))} == a_rows
        assert not Event.select().where(Event.message.in_(list(a_rows)), Event.id > last_event).exists()
        assert len(sink.attempts) == a_attempts
        assert not [n for n in counts(sink_b) if tried[n] == "a"]        # B relayed none of A's mail
        acked_a = {n for n, node in acked.items() if node == "a"}
        acked_b = {n for n, node in acked.items() if node == "b"}
        assert any(state in models.IN_FLIGHT for state, *_ in a_rows.values())

        sink.data_reply = None
        a.start()
        wait_until(lambda: acked_a <= set(counts(sink)), 60, "A to deliver what it acknowledged")
        wait_until(lambda: acked_b <= set(counts(sink_b)), 60, "B to deliver what it acknowledged")
        wait_until(lambda: not Message.select().where(Message.state.in_(models.IN_FLIGHT)).exists(), 30,
                 "nothing left in flight")
    finally:
        b.stop()
    got_a, got_b = counts(sink), counts(sink_b)
    assert all(count == 1 for count in list(got_a.values()) + list(got_b.values())), "delivered twice"
    assert set(got_a) <= {n for n, node in tried.items() if node == "a"}
    assert set(got_b) <= {n for n, node in tried.items() if node == "b"}
    print("acknowledged A %d, B %d; A's records at the kill %d (%d acknowledged in flight)"
          % (len(acked_a), len(acked_b), len(a_rows),
             sum(1 for state, _, answered, *_ in a_rows.values() if answered and state in models.IN_FLIGHT)))
    resumed = Event.select().where(Event.kind == "resumed", Event.message.in_(list(a_rows))).count()
    assert resumed == sum(1 for state, _, answered, *_ in a_rows.values() if answered and state in models.IN_FLIGHT)


# ---------------------------------------------------------------- one name, two daemons
def test_a_second_daemon_with_the_same_node_name_stops_before_touching_its_mail(tmp_path, shared_db, nodes, sink):
    """A copied VM keeps its host name, the default NodeName: its recovery would drop the records
    of sessions the first node is answering and relay the first node's mail a second time."""
    sink.data_reply = (451, "4.3.0 busy, come back later")
    a = nodes(tmp_path / "a", "alpha", shared_db, sink.port, SmtpReplyTimeout=0.02).start()
    for n in range(3):
        a.send(numbered(n))
    wait_until(lambda: Message.select().where(Message.node == "alpha", Message.state == "deferred").count() == 3,
               30, "three deferred messages on alpha")
    before = {r.id: r.state for r in Message.select()}
    twin = nodes(tmp_path / "twin", "alpha", shared_db, sink.port)
    run = subprocess.run([SALMON, "start", "--no-daemon", "--force", "--pid", str(twin.pid)], cwd=ROOT,
                         env=twin.env, capture_output=True, text=True, timeout=60)
    said = run.stderr + twin.tail()
    assert run.returncode != 0 and "another running vxgate is node 'alpha'" in said, said
    assert "NodeName" in said and "Traceback" not in run.stderr and engine.password(shared_db) not in said
    assert {r.id: r.state for r in Message.select()} == before      # alpha retries them; nothing else touched them
    assert not Event.select().where(Event.kind.in_(["resumed", "dropped", "held"])).exists()
    assert _running_column(a.vxgate("db", "status")) == {"alpha": "yes"}
    a.kill()                  # the server frees the name with the session: a restart needs no clean-up
    wait_until(lambda: _running_column(a.vxgate("db", "status")) == {"alpha": "no"}, 10,
               "the server to free the name of the killed node")
    sink.data_reply = None
    a.start()
    wait_until(lambda: len(counts(sink)) == 3, 30, "alpha, started again after kill -9, to deliver its mail")
    assert all(count == 1 for count in counts(sink).values())


def _running_column(status):
    """{node: RUNNING} from `vxgate db status`."""
    lines = status.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["NODE", "RUNNING"])
    return {line.split()[0]: line.split()[1] for line in lines[header + 1:] if line.startswith("  ")}


# ---------------------------------------------------------------- the database restarted
def test_database_restart_under_load_tempfails_and_loses_nothing(tmp_path, pg_cluster, nodes, sink):
    """A cluster of its own: stopping the session's would break other tests' databases."""
    cluster = pgcluster.Cluster().init().start()
    try:
        url = cluster.url(cluster.create_template())
        # 250 comes before the relay ends, so acknowledged mail is in flight when the database stops
        node = nodes(tmp_path / "a", "node-a", url, sink.port, SmtpReplyTimeout=0.02).start()
        sink.data_reply = lambda msg: (time.sleep(0.05), None)[1]
        acked, refused, lock, stop = set(), [], threading.Lock(), threading.Event()
        replies = {}
        counter = iter(range(10 ** 6))

        def load():
            while not stop.is_set():
                with lock:
                    n = next(counter)
                try:
                    node.send(numbered(n))
                    with lock:
                        acked.add(n)
                except smtplib.SMTPResponseException as exc:
                    refused.append(exc.smtp_code)
                    replies[n] = (exc.smtp_code, exc.smtp_error)
                    stop.wait(0.01)      # a sending MTA backs off; no busy loop on a 2-core box
                except (OSError, smtplib.SMTPException) as exc:
                    refused.append(repr(exc))
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(acked) >= 30, 60, "mail to flow")
            cluster.stop()
            wait_until(lambda: refused.count(451) >= 5, 60, "451 while the database is down")
            cluster.start()
            after = len(acked)
            wait_until(lambda: len(acked) >= after + 30, 90, "mail accepted again without a restart")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert node.proc.poll() is None
        # the restarted server forgot which daemon holds the name "node-a": its heartbeat takes it again
        wait_until(lambda: _running_column(node.vxgate("db", "status")) == {"node-a": "yes"}, 60,
                   "node-a to hold its name again")
        assert {code for code in refused if not isinstance(code, int) or code >= 500} == set(), refused
        assert {code for code in refused if isinstance(code, int)} <= {421, 451}, refused
        wait_until(lambda: acked <= set(counts(sink)), 90, "every acknowledged message delivered")
        got = counts(sink)
        print("acknowledged %d, refused %d (%s), delivered %d"
              % (len(acked), len(refused), sorted(set(map(str, refused))), len(got)))
        assert [n for n, count in got.items() if count > 1] == [], "delivered twice"
        # a refused message the sending MTA will send again must not have gone out as well
        assert {n: replies.get(n) for n in set(got) - acked} == {}
    finally:
        cluster.destroy()
