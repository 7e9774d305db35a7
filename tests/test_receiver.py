"""The receiver over real sockets: envelope kept exactly, limits refused cleanly, no smuggling."""
import smtplib
import socket
import threading

import pytest

from salmon_app.storage.models import Message, Recipient

pytestmark = pytest.mark.both_engines     # each test runs on SQLite and on PostgreSQL


def body(subject="test", extra=b""):
    return (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: " + subject.encode()
            + b"\r\nMessage-ID: <1@example.test>\r\n\r\nHello\r\n" + extra)


def test_many_recipients_null_sender_and_case_kept(vxgate, sink):
    gw = vxgate()
    rcpts = ["User%d@Example.TEST" % i for i in range(50)]
    gw.send("", rcpts, body())
    got = sink.wait_for(1, 10)[0]
    assert got.mail_from == ""
    assert got.rcpt_tos == rcpts
    row = Message.get()
    assert row.rcpt_to == rcpts and row.state == "delivered" and row.subject == "test"
    assert Recipient.select().where(Recipient.state == "delivered").count() == 50


def test_8bit_and_utf8_addresses(vxgate, sink):
    gw = vxgate()
    data = "From: Jörg <jörg@exämple.test>\r\nSubject: Grüße\r\n\r\nÄÖÜ ß 日本語\r\n".encode("utf-8")
    with gw.client() as client:
        client.ehlo()
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
        client.sendmail("jörg@exämple.test", ["björn@exämple.test", "plain@example.test"], data,
                        mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    got = sink.wait_for(1, 10)[0]
    assert got.data == data
    assert got.mail_from == "jörg@exämple.test"
    assert got.rcpt_tos == ["björn@exämple.test", "plain@example.test"]
    assert Message.get().body_8bit and Message.get().smtputf8


def test_non_ascii_address_without_smtputf8_refused(vxgate, raw):
    gw = vxgate()
    client = raw(gw.port)
    assert client.cmd(b"EHLO test")[0] == 250
    assert client.cmd("MAIL FROM:<jörg@x.test>".encode())[0] == 553


def test_dot_stuffing_undone_and_relayed_identically(vxgate, sink, raw):
    gw = vxgate()
    client = raw(gw.port)
    client.cmd(b"EHLO test")
    client.cmd(b"MAIL FROM:<a@x.test>")
    client.cmd(b"RCPT TO:<b@x.test>")
    assert client.cmd(b"DATA")[0] == 354
    code, text = client.cmd(b"Subject: dots\r\n\r\n..one\r\n...two\r\n.\r\n")
    assert code == 250, text
    assert sink.wait_for(1, 10)[0].data == b"Subject: dots\r\n\r\n.one\r\n..two\r\n"


@pytest.mark.parametrize("payload", [
    b"Subject: s\r\n\r\nline\n.\nMAIL FROM:<evil@x.test>\r\n",     # bare LF dot bare LF
    b"Subject: s\r\n\r\nline\n.\r\nRCPT TO:<evil@x.test>\r\n",     # LF . CRLF
    b"Subject: s\r\n\r\nline\r\n.\nDATA\r\n",                        # CRLF . LF
])
def test_smuggling_refused_and_only_crlf_dot_crlf_ends_data(vxgate, sink, raw, payload):
    gw = vxgate()
    client = raw(gw.port)
    client.cmd(b"EHLO test")
    client.cmd(b"MAIL FROM:<a@x.test>")
    client.cmd(b"RCPT TO:<b@x.test>")
    client.cmd(b"DATA")
    client.send(payload)
    client.send(b"still data\r\n.\r\n")
    code, text = client.reply()
    assert code == 550 and "bare LF" in text
    assert client.cmd(b"NOOP")[0] == 250     # the smuggled commands were never commands
    assert sink.messages == [] and Message.select().count() == 0


def test_overlong_lines(vxgate, sink, raw):
    gw = vxgate()
    client = raw(gw.port)
    client.cmd(b"EHLO test")
    assert client.cmd(b"NOOP " + b"x" * 5000)[0] == 500
    client.cmd(b"MAIL FROM:<a@x.test>")
    client.cmd(b"RCPT TO:<b@x.test>")
    client.cmd(b"DATA")
    client.send(b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\nshort\r\n.\r\n")
    code, text = client.reply()
    assert code == 550 and "longer than 998" in text
    assert client.cmd(b"QUIT")[0] == 221
    assert sink.messages == [] and Message.select().count() == 0


def test_size_advertised_and_enforced(vxgate, sink, raw):
    gw = vxgate(SmtpMaxMessageSize=10000)
    client = raw(gw.port)
    code, text = client.cmd(b"EHLO test")
    assert "SIZE 10000" in text and "PIPELINING" in text and "XFORWARD" in text
    assert client.cmd(b"MAIL FROM:<a@x.test> SIZE=20000")[0] == 552
    client.cmd(b"MAIL FROM:<a@x.test>")
    client.cmd(b"RCPT TO:<b@x.test>")
    client.cmd(b"DATA")
    client.send(b"Subject: big\r\n\r\n" + b"z" * 900 + b"\r\n" * 1 + (b"z" * 900 + b"\r\n") * 20 + b".\r\n")
    assert client.reply()[0] == 552
    assert sink.messages == []


def test_pipelining_and_xforward_kept(vxgate, sink, raw):
    gw = vxgate()
    client = raw(gw.port)
    client.cmd(b"EHLO postfix.test")
    assert client.cmd(b"XFORWARD NAME=mail.client.test ADDR=192.0.2.7 PORT=4711 PROTO=ESMTP HELO=client.test")[0] == 250
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")
    assert [client.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    client.send(b"Subject: p\r\n\r\nbody\r\n.\r\n")
    assert client.reply()[0] == 250
    client_info = Message.get().client
    assert client_info["addr"] == "192.0.2.7" and client_info["helo"] == "client.test"
    sink.wait_for(1, 5)
    assert sink.xforward_seen and sink.xforward_seen[-1].get("ADDR") == "192.0.2.7"


def test_connection_cap_answers_421_and_server_survives(vxgate, sink):
    gw = vxgate(SmtpMaxConnections=20)
    socks, codes = [], []
    lock = threading.Lock()

    def connect():
        try:
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            line = sock.makefile("rb").readline()
            with lock:
                socks.append(sock)
                codes.append(int(line[:3]) if line else 0)
        except OSError:
            with lock:
                codes.append(-1)
    threads = [threading.Thread(target=connect) for _ in range(300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(220) == 20
    assert codes.count(421) == 280
    for sock in socks:
        sock.close()
    # the server is alive and takes mail again once connections are released
    import time
    time.sleep(0.3)
    gw.send("a@x.test", ["b@x.test"], body())
    assert len(sink.wait_for(1, 10)) == 1


def test_idle_timeout(vxgate, raw):
    gw = vxgate(SmtpIdleTimeout=0.5)
    client = raw(gw.port)
    assert client.reply()[0] == 421


def test_protocol_errors(vxgate, raw):
    gw = vxgate()
    client = raw(gw.port)
    assert client.cmd(b"MAIL FROM:<a@x.test>")[0] == 503
    client.cmd(b"EHLO t")
    assert client.cmd(b"RCPT TO:<b@x.test>")[0] == 503
    assert client.cmd(b"DATA")[0] == 503
    assert client.cmd(b"BOGUS")[0] == 500
    client.cmd(b"MAIL FROM:<a@x.test>")
    assert client.cmd(b"MAIL FROM:<a@x.test>")[0] == 503
    assert client.cmd(b"DATA")[0] == 554
    assert client.cmd(b"RSET")[0] == 250
    assert client.cmd(b"MAIL FROM:<a@x.test> FOO=BAR")[0] == 555


def test_lmtp_on_a_unix_socket_replies_per_recipient(vxgate, sink, tmp_path):
    from salmon_app.config import SocketAddr
    path = str(tmp_path / "smtp.sock")
    vxgate(SmtpSocket=SocketAddr(path=path))
    client = smtplib.LMTP(path)
    try:
        code, _ = client.ehlo("postfix.test")
        assert code == 250
        refused = client.sendmail("a@x.test", ["b@x.test", "c@x.test"], body())
        assert refused == {}
    finally:
        client.quit()
    got = sink.wait_for(1, 10)[0]
    assert got.rcpt_tos == ["b@x.test", "c@x.test"] and got.data == body()


def test_quoted_local_parts_source_routes_and_parameters_relayed_verbatim(vxgate, sink, raw):
    gw = vxgate()
    client = raw(gw.port)
    client.cmd(b"EHLO t")
    assert client.cmd(b'MAIL FROM:<"john doe"@x.test>')[0] == 250
    assert client.cmd(b'RCPT TO:<"a..b"@y.test>')[0] == 250
    assert client.cmd(b"RCPT TO:<@r1.test,@r2.test:c@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@y.test")[0] == 250
    assert client.cmd(b'RCPT TO:  <"d e"@y.test>')[0] == 250
    assert client.cmd(b"RCPT TO:<>")[0] == 553
    assert client.cmd(b"RCPT TO:<x@y.test> NOTIFY=NEVER NOTIFY=NEVER NOTIFY=NEVER")[0] == 501
    client.cmd(b"DATA")
    assert client.cmd(b"Subject: q\r\n\r\nx\r\n.\r\n")[0] == 250
    got = sink.wait_for(1, 10)[0]
    assert got.mail_from == '"john doe"@x.test' and got.rcpt_tos == ['"a..b"@y.test', "c@y.test", '"d e"@y.test']
    assert Message.get().params["rcpt"] == {"c@y.test": {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;c@y.test"}}
    # a quoted '>' and a quoted pair (checked on the record: the test sink cuts at the first '>')
    assert client.cmd(b'MAIL FROM:<"a\\">b"@x.test> BODY=8BITMIME RET=HDRS ENVID=id+2B1')[0] == 250
    client.cmd(b"RCPT TO:<b@y.test>")
    client.cmd(b"DATA")
    assert client.cmd(b"Subject: q\r\n\r\nx\r\n.\r\n")[0] == 250
    row = Message.get(Message.mail_from == '"a\\">b"@x.test')
    assert row.params["mail"] == {"BODY": "8BITMIME", "RET": "HDRS", "ENVID": "id+2B1"}
