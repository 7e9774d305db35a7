"""The private-Postfix harness and the SMTP sink work on their own, without vxgate.

The ``postfix`` tests start real Postfix instances (root + the Debian package needed; they
skip otherwise): (a) plain relay to the sink, (b) after-queue filter wiring through a tiny
stand-in filter that re-injects into the re-injection port, (c) a closed filter port keeps
mail deferred until the filter appears and the queue is flushed, (d) BCC mode.  The sink
tests at the end need no Postfix.
"""
from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from support.postfix import PostfixInstance, free_port, postfix_skip_reason
from support.sink import SinkMessage, SinkServer

SKIP_REASON = postfix_skip_reason()
needs_postfix = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


@pytest.fixture
def sinks():
    started: list[SinkServer] = []

    def make(**kw) -> SinkServer:
        sink = SinkServer(**kw).start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.stop()


@pytest.fixture
def postfix(tmp_path):
    """Factory: postfix(**kwargs) -> started PostfixInstance; all stopped at teardown."""
    started: list[PostfixInstance] = []

    def make(**kw) -> PostfixInstance:
        kw.setdefault("inbound_port", free_port())
        inst = PostfixInstance(tmp_path / f"pf{len(started)}", **kw)
        started.append(inst)
        return inst.start()

    yield make
    for inst in started:
        inst.stop()
        assert inst.pids() == [], f"processes left behind by {inst.name}"


def standin_filter(make_sink, reinject_port: int, port: int = 0) -> SinkServer:
    """A stand-in content filter: accepts from Postfix's ``scan`` transport, passes the
    XFORWARD attributes on and re-injects the message unchanged; answers 250 only after
    the re-injection port accepted it (a failure there becomes a 451 from the sink)."""
    filt = make_sink(port=port, hostname="standin-filter.test")

    def reinject(msg: SinkMessage):
        with smtplib.SMTP("127.0.0.1", reinject_port, local_hostname="standin-filter.test", timeout=30) as c:
            c.ehlo()
            if msg.xforward:
                code, resp = c.docmd("XFORWARD", " ".join(f"{k}={v}" for k, v in msg.xforward.items()))
                assert code == 250, resp
            c.sendmail(msg.mail_from, msg.rcpt_tos, msg.data)
        return None

    filt.on_data = reinject
    return filt


BODY = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@dest.test\r\n"
    b"Subject: harness test\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <harness-test@example.test>\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line starting with a dot\r\n"
    b"last line\r\n"
)


@pytest.mark.postfix
@needs_postfix
def test_plain_relay_delivers_to_sink(postfix, sinks):
    sink = sinks()
    pf = postfix(relay_to=("127.0.0.1", sink.port))

    queue_id = pf.send("alice@example.test", ["bob@dest.test", "carol@other.test"], BODY)
    (msg,) = sink.wait_for(1, timeout=15)
    assert msg.mail_from == "alice@example.test"
    assert sorted(msg.rcpt_tos) == ["bob@dest.test", "carol@other.test"]
    assert msg.data.endswith(BODY)  # Postfix only prepends its Received: header
    assert msg.data.startswith(b"Received: from client.test")
    assert f"with ESMTP id {queue_id}".encode() in msg.data
    assert msg.helo == f"{pf.name}.vxgate.test"
    pf.wait_queue_empty(10)
    assert f"{queue_id}: removed" in pf.log_text()

    if shutil.which("swaks"):
        subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(pf.inbound_port),
             "--from", "swaks@example.test", "--to", "dave@dest.test", "--helo", "swaks.test",
             "--header", "Subject: via swaks", "--body", "hello from swaks"],
            check=True, capture_output=True, timeout=30,
        )
        msgs = sink.wait_for(2, timeout=15)
        assert msgs[1].mail_from == "swaks@example.test"
        assert msgs[1].rcpt_tos == ["dave@dest.test"]
        assert b"Subject: via swaks" in msgs[1].data and b"hello from swaks" in msgs[1].data
    assert len(sink.messages) == len(sink.attempts)


@pytest.mark.postfix
@needs_postfix
def test_after_queue_filter_reinjects_once(postfix, sinks):
    final = sinks()
    reinject_port = free_port()
    filt = standin_filter(sinks, reinject_port)
    pf = postfix(filter_addr=("127.0.0.1", filt.port), reinject_port=reinject_port,
                 relay_to=("127.0.0.1", final.port))

    pf.send("alice@example.test", ["bob@dest.test", "carol@other.test"], BODY)
    (seen,) = filt.wait_for(1, timeout=15)
    (msg,) = final.wait_for(1, timeout=15)
    pf.wait_queue_empty(10)
    time.sleep(1.5)  # a loop (missing "content_filter=" on re-injection) would show up now

    assert len(filt.attempts) == 1 and len(final.attempts) == 1
    # one transaction carries all recipients to the filter, XFORWARD tells the client
    assert sorted(seen.rcpt_tos) == ["bob@dest.test", "carol@other.test"]
    assert seen.xforward.get("ADDR") == "127.0.0.1"
    assert seen.xforward.get("HELO") == "client.test"
    assert seen.data.endswith(BODY)
    # the final hop gets what the filter re-injected, envelope intact
    assert msg.mail_from == "alice@example.test"
    assert sorted(msg.rcpt_tos) == ["bob@dest.test", "carol@other.test"]
    assert msg.data.endswith(seen.data)
    # it passed Postfix twice: inbound smtpd, then the re-injection smtpd
    assert msg.data.count(b"\r\nReceived: ") + msg.data.startswith(b"Received: ") == 2
    log = pf.log_text()
    assert f"relay=127.0.0.1[127.0.0.1]:{filt.port}" in log
    # the re-injection smtpd accepted the forwarded client attributes (XFORWARD IDENT)
    assert "orig_queue_id=" in log and "xforward=1" in log


@pytest.mark.postfix
@needs_postfix
def test_closed_filter_port_defers_until_flush(postfix, sinks):
    final = sinks()
    reinject_port, filter_port = free_port(), free_port()
    pf = postfix(filter_addr=("127.0.0.1", filter_port), reinject_port=reinject_port,
                 relay_to=("127.0.0.1", final.port))

    queue_id = pf.send("alice@example.test", "bob@dest.test", BODY)
    # What matters is the deferral, and Postfix logs it. The queue listing is no witness: with
    # 1 s back-off the message cycles deferred -> incoming -> active -> deferred, and on a busy
    # machine a poll can miss the deferred queue for longer than any fixed wait.
    deferral = wait_for_log_line(pf, lambda line: f"{queue_id}: to=<bob@dest.test>" in line
                                 and "status=deferred" in line, timeout=LOADED)
    assert "Connection refused" in deferral, deferral
    (entry,) = pf.wait_queue(lambda q: len(q) == 1, timeout=LOADED)     # still Postfix's, in any queue
    assert entry.queue_id == queue_id
    assert entry.sender == "alice@example.test"
    assert entry.addresses == ["bob@dest.test"]
    assert final.messages == []

    filt = standin_filter(sinks, reinject_port, port=filter_port)
    pf.flush()
    (msg,) = final.wait_for(1, timeout=LOADED)
    assert msg.data.endswith(BODY)
    assert len(filt.messages) == 1
    pf.wait_queue_empty(LOADED)
    assert f"{queue_id}: to=<bob@dest.test>, relay=127.0.0.1[127.0.0.1]:{filter_port}" in pf.log_text()


# a generous deadline for a 2-core machine shared with other jobs; passing tests do not wait it out
LOADED = 120


def wait_for_log_line(pf, match, timeout):
    """The first line of the instance's maillog for which ``match`` is true, waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        line = next((line for line in pf.log_text().splitlines() if match(line)), None)
        if line is not None:
            return line
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pf.name}: no such log line after {timeout}s\n{pf.log_tail()}")
        time.sleep(0.2)


@pytest.mark.postfix
@needs_postfix
def test_bcc_copy_is_added_at_reinjection(postfix, sinks):
    final, monitor = sinks(), sinks()
    reinject_port = free_port()
    filt = standin_filter(sinks, reinject_port)
    pf = postfix(filter_addr=("127.0.0.1", filt.port), reinject_port=reinject_port,
                 relay_to=("127.0.0.1", final.port),
                 bcc={"always_bcc": "monitor@bcc.example.internal",
                      "bcc_socket": ("127.0.0.1", monitor.port)})

    pf.send("alice@example.test", "bob@dest.test", BODY)
    (copy,) = monitor.wait_for(1, timeout=15)
    (msg,) = final.wait_for(1, timeout=15)
    pf.wait_queue_empty(10)
    assert filt.messages[0].rcpt_tos == ["bob@dest.test"]  # no_address_mappings before the filter
    assert msg.rcpt_tos == ["bob@dest.test"]
    assert copy.rcpt_tos == ["monitor@bcc.example.internal"]
    assert copy.mail_from == "alice@example.test"
    assert copy.data.endswith(BODY)


# --------------------------------------------------------------------- sink only (no Postfix)

def _raw_session(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_sink_keeps_bytes_and_ends_only_on_crlf_dot_crlf(sinks):
    sink = sinks()
    data = (b"EHLO raw.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
            b"bare\nlf\n.\nstill data\r\n..stuffed\r\nlone\rcr \xc3\xa9\r\n.\r\nQUIT\r\n")
    out = _raw_session(sink.port, data)
    assert b"250-PIPELINING" in out and b"250 XFORWARD NAME ADDR" in out and b"\r\n221 " in out
    (msg,) = sink.wait_for(1, timeout=5)
    assert msg.data == b"bare\nlf\n.\nstill data\r\n.stuffed\r\nlone\rcr \xc3\xa9\r\n"
    assert msg.mail_options == ["BODY=8BITMIME"]
    assert msg.helo == "raw.test"


def test_sink_scripted_replies(sinks):
    sink = sinks()
    sink.rcpt_reply = {"bad@y.test": (550, "5.1.1 no such user")}
    sink.data_reply = (451, "4.3.0 try later")
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as c:
        c.ehlo("client.test")
        c.mail("a@x.test")
        assert c.rcpt("bad@y.test") == (550, b"5.1.1 no such user")
        assert c.rcpt("good@y.test")[0] == 250
        assert c.data(b"Subject: x\r\n\r\nbody\r\n") == (451, b"4.3.0 try later")
        sink.data_reply = None
        c.rset()
        c.mail("a@x.test")
        c.rcpt("good@y.test")
        assert c.data(b"Subject: x\r\n\r\nbody\r\n")[0] == 250
    assert len(sink.attempts) == 2
    (msg,) = sink.wait_for(1, timeout=5)
    assert msg.rcpt_tos == ["good@y.test"]


def test_sink_auth_plain_and_login(sinks):
    sink = sinks(require_auth=("user", "s3cret"))
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as c:
        c.ehlo("client.test")
        assert c.has_extn("auth")
        assert c.mail("a@x.test")[0] == 530
        c.login("user", "s3cret")  # smtplib picks PLAIN from "AUTH PLAIN LOGIN"
        c.sendmail("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\nbody\r\n")
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as c:
        c.ehlo("client.test")
        code, _ = c.docmd("AUTH", "LOGIN " + base64.b64encode(b"user").decode())
        assert code == 334
        code, _ = c.docmd(base64.b64encode(b"wrong").decode())
        assert code == 535
        code, _ = c.docmd("AUTH", "LOGIN")
        assert code == 334
        c.docmd(base64.b64encode(b"user").decode())
        code, _ = c.docmd(base64.b64encode(b"s3cret").decode())
        assert code == 235
    assert sink.auth_seen[0] == ("user", "s3cret") and sink.auth_seen[0].ok
    assert sink.auth_seen[0].mechanism == "PLAIN"
    assert sink.auth_seen[1] == ("user", "wrong") and not sink.auth_seen[1].ok
    assert sink.auth_seen[2].mechanism == "LOGIN"
    assert sink.wait_for(1, timeout=5)[0].auth_user == "user"
