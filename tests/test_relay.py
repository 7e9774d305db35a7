"""Relaying: byte-identical, per-recipient outcomes, a next hop that is down, bounces, timeouts."""
import email
import smtplib
import time

import pytest

from salmon_app.storage.models import Event, Message, Recipient

pytestmark = pytest.mark.both_engines     # each test runs on SQLite and on PostgreSQL


def body(n=1):
    return b"From: a@x.test\r\nTo: b@x.test\r\nSubject: relay %d\r\nMessage-ID: <%d@x.test>\r\n\r\nhello\r\n" % (n, n)


def data_reply(gw, data, sender="a@x.test", rcpt="b@x.test"):
    """(code, text) of the reply to DATA: what Postfix hears for one message."""
    with gw.client() as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt(rcpt)
        return client.data(data)


def wait_state(queue_filter, state, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = list(Message.select().where(queue_filter))
        if rows and all(r.state == state for r in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError("not %s: %s" % (state, [(r.id, r.state) for r in Message.select().where(queue_filter)]))


def test_reply_carries_next_hop_id(vxgate, sink):
    gw = vxgate()
    code, text = data_reply(gw, body())
    assert code == 250 and b"next hop: SINK" in text
    row = Message.get()
    assert row.next_hop_id.startswith("SINK") and not gw.gateway.spool.exists(row.id)


def test_next_hop_down_then_up_nothing_lost(vxgate, sink):
    gw = vxgate()            # first: a stopped sink's port could be handed to vxgate's own listener
    sink.stop()
    for n in range(5):
        code, text = data_reply(gw, body(n))
        assert code == 250 and b"deferred" in text     # owned durably, retried by vxgate
    rows = wait_state(Message.mode == "smtp", "deferred")
    assert all(r.answered for r in rows)
    sink.start()
    wait_state(Message.mode == "smtp", "delivered", timeout=15)
    assert sorted(m.data for m in sink.wait_for(5, 5)) == sorted(body(n) for n in range(5))


def test_per_recipient_permanent_and_temporary_replies(vxgate, sink):
    sink.rcpt_reply = {"gone@x.test": (550, "5.1.1 no such user"), "later@x.test": (451, "4.2.0 busy")}
    gw = vxgate()
    gw.send("sender@x.test", ["ok@x.test", "gone@x.test", "later@x.test"], body())
    first = sink.wait_for(1, 5)[0]
    assert first.rcpt_tos == ["ok@x.test"]
    row = wait_state(Message.mode == "smtp", "deferred")[0]
    states = {r.address: r.state for r in Recipient.select().where(Recipient.message == row.id)}
    assert states == {"ok@x.test": "delivered", "gone@x.test": "bounced", "later@x.test": "deferred"}
    sink.rcpt_reply = {}
    wait_state(Message.mode == "smtp", "delivered")
    # only the deferred recipient was tried again; the bounce went to the sender only for gone@
    msgs = sink.wait_for(3, 10)
    later = [m for m in msgs if m.rcpt_tos == ["later@x.test"]]
    bounces = [m for m in msgs if m.mail_from == "" and m.rcpt_tos == ["sender@x.test"]]
    assert len(later) == 1 and later[0].data == body()
    assert len(bounces) == 1
    report = email.message_from_bytes(bounces[0].data)
    assert report.get_content_type() == "multipart/report"
    text = bounces[0].data.decode()
    assert "gone@x.test" in text and "5.1.1" in text and "later@x.test" not in text.split("text/rfc822-headers")[0]
    assert "hello" not in text      # the bounce never carries the message body


def test_every_recipient_refused_while_waiting_gives_5xx_to_the_client(vxgate, sink):
    sink.rcpt_reply = {"gone@x.test": (550, "5.1.1 no such user")}
    gw = vxgate()
    with pytest.raises(smtplib.SMTPDataError) as info:
        code, text = data_reply(gw, body(), rcpt="gone@x.test")
        raise smtplib.SMTPDataError(code, text)
    assert info.value.smtp_code == 550 and b"no such user" in info.value.smtp_error
    assert Message.get().state == "rejected"
    assert Message.select().where(Message.mode == "notice").count() == 0   # the MTA bounces, not us


def test_refusals_of_a_pipelined_transaction_keep_the_kept_connection_in_step(vxgate, sink):
    """The relay sends MAIL, RCPT and DATA at once (the sink offers PIPELINING): a refused MAIL
    FROM, then a refused recipient, each reach the client, and the next message goes through the
    same kept connection, every reply of the refused transactions having been read."""
    sink.mail_reply = lambda sender: (550, "5.7.1 sender refused") if sender == "bad@x.test" else None
    sink.rcpt_reply = {"gone@x.test": (550, "5.1.1 no such user")}
    gw = vxgate(SmtpRelayWorkers=1)
    for sender, rcpt, expected in (("bad@x.test", "b@x.test", b"sender refused"),
                                   ("a@x.test", "gone@x.test", b"no such user")):
        code, text = data_reply(gw, body(), sender=sender, rcpt=rcpt)
        assert code == 550 and expected in text
    gw.send("a@x.test", ["b@x.test"], body(2))
    got = sink.wait_for(1, 10)
    assert got[0].data == body(2) and got[0].rcpt_tos == ["b@x.test"]
    assert sink.connections == 1


def test_data_4xx_then_accepted(vxgate, sink):
    replies = [(452, "4.3.1 insufficient storage")]
    sink.data_reply = lambda msg: replies.pop() if replies else None
    gw = vxgate()
    gw.send("a@x.test", ["b@x.test"], body())
    wait_state(Message.mode == "smtp", "delivered")
    assert len(sink.messages) == 1
    kinds = [e.kind for e in Event.select().order_by(Event.time)]
    assert "deferred" in kinds and "delivered" in kinds


def test_max_age_bounces(vxgate, sink):
    # old enough to bounce at a retry, not at the first attempt: a new gateway's first message
    # reached the next hop after 0.5 s on a slow day, and then failed while its session waited (554)
    gw = vxgate(SmtpRelayMaxAge=2.0)
    sink.stop()
    gw.send("sender@x.test", ["b@x.test"], body())
    row = wait_state(Message.mode == "smtp", "failed")[0]   # a retry after the maximum age failed
    sink.start()
    bounce = sink.wait_for(1, 10)[0]
    assert bounce.mail_from == "" and bounce.rcpt_tos == ["sender@x.test"]
    assert b"5.4.7" in bounce.data
    assert Recipient.get(Recipient.message == row.id).state == "bounced"


def test_slow_outcome_answers_250_and_finishes_in_background(vxgate, sink):
    gate = __import__("threading").Event()
    sink.data_reply = lambda msg: (gate.wait(10), None)[1]
    gw = vxgate(SmtpReplyTimeout=0.3)
    start = time.time()
    code, text = data_reply(gw, body())
    assert code == 250 and time.time() - start < 3
    row = Message.get()
    assert row.answered    # recorded before the 250 was sent: vxgate owns the message now
    gate.set()
    wait_state(Message.mode == "smtp", "delivered")
    assert sink.wait_for(1, 5)[0].data == body()


def test_a_next_hop_that_stops_answering_times_out_and_the_message_goes_later(vxgate, sink):
    """The relay's time-out is the kernel's (salmon_app/sockio.py): a next hop that accepts
    the connection and then says nothing holds a worker SmtpRelayTimeout, not for ever."""
    import threading
    stalled, gate = threading.Event(), threading.Event()

    def mail_reply(sender):
        if not stalled.is_set():
            stalled.set()
            gate.wait(10)           # silent past the time-out, once
        return None
    sink.mail_reply = mail_reply
    gw = vxgate(SmtpRelayTimeout=0.5, SmtpRelayRetryMin=0.2)
    started = time.time()
    code, text = data_reply(gw, body())
    assert code == 250 and b"deferred" in text and time.time() - started < 5
    row = Message.get()
    assert "timed out" in row.last_reply, row.last_reply
    gate.set()
    wait_state(Message.mode == "smtp", "delivered", timeout=15)
    assert [m.data for m in sink.wait_for(1, 5)] == [body()]


def test_handler_error_becomes_451_never_250(vxgate, sink, monkeypatch):
    gw = vxgate()

    def broken(message, analysis):
        raise RuntimeError("policy exploded")
    monkeypatch.setattr(gw.gateway.checks, "decide", broken)
    code, text = data_reply(gw, body())
    assert code == 451
    row = Message.get()
    assert row.state == "tempfailed" and not gw.gateway.spool.exists(row.id)
    assert sink.messages == []


def test_thirty_megabyte_message(vxgate, sink):
    gw = vxgate()
    line = b"0123456789" * 7 + b"\r\n"
    data = b"Subject: big\r\n\r\n" + line * (30 * 1024 * 1024 // len(line))
    gw.send("a@x.test", ["b@x.test"], data)
    got = sink.wait_for(1, 30)[0]
    assert got.data == data


def test_next_hop_connections_are_kept_and_reused_by_the_workers(vxgate, sink):
    """30 messages from 6 parallel clients, a new client connection each: the next hop sees at
    most one connection per relay worker (each keeps its own), not one per message."""
    import threading
    gw = vxgate(SmtpWorkers=4, SmtpRelayWorkers=2)
    errors = []

    def client(first):
        try:
            for n in range(first, first + 5):
                gw.send("a@x.test", ["b@x.test"], body(n))
        except Exception as exc:      # reported below, with the others
            errors.append(exc)
    threads = [threading.Thread(target=client, args=(k * 5,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(sink.wait_for(30, 10)) == 30
    rows = wait_state(Message.mode == "smtp", "delivered")
    assert len(rows) == 30 and {r.action for r in rows} == {"accept"}     # the hook decided each one
    assert 1 <= sink.connections <= 2


def test_recipients_are_sorted_by_their_reply():
    """2xx delivered, 5xx bounced, everything else (4xx, no reply, a 3xx no RCPT may give)
    deferred and tried again: no reply leaves a recipient in no kind."""
    from salmon_app.relay import RelayResult
    result = RelayResult({"a@x.test": (250, "ok"), "b@x.test": (451, "later"), "c@x.test": (550, "no"),
                          "d@x.test": (0, "no reply"), "e@x.test": (354, "odd")})
    assert result.by_kind() == {"ok": ["a@x.test"], "temp": ["b@x.test", "d@x.test", "e@x.test"],
                                "perm": ["c@x.test"]}
    assert result.recipients("temp") == ["b@x.test", "d@x.test", "e@x.test"]
