"""Hostile envelopes and header blocks over real sockets: each costs the receiver milliseconds,
gets a 2xx/5xx with its reason, and never stalls a clean message in a parallel session."""
import smtplib
import threading
import time

from support import hostile

from salmon_app.storage.models import Message

CLEAN = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: clean\r\nMessage-ID: <c@x.test>\r\n\r\nHello\r\n"
XFORWARD_KEYS = {"name", "addr", "port", "proto", "ident", "source"}


class Parallel:
    """A clean session that is inside its transaction and sends DATA when ``go`` is set."""

    def __init__(self, port):
        self.client = smtplib.SMTP("127.0.0.1", port, timeout=60)
        self.client.ehlo("parallel.test")
        assert self.client.mail("a@x.test")[0] == 250
        assert self.client.rcpt("b@x.test")[0] == 250
        self.go, self.reply = threading.Event(), None
        self.thread = threading.Thread(target=self._finish, daemon=True)
        self.thread.start()

    def _finish(self):
        self.go.wait(60)
        try:
            self.reply = self.client.data(CLEAN)
            self.client.quit()
        except (OSError, smtplib.SMTPException) as exc:
            self.reply = (0, repr(exc))

    def result(self):
        self.thread.join(60)
        return self.reply


def timed(client, data, parallel):
    """Send ``data``, let ``parallel`` finish its message meanwhile, and time the reply."""
    started = time.monotonic()
    client.send(data)
    parallel.go.set()
    code, text = client.reply()
    return code, text, time.monotonic() - started


def test_hostile_commands_cost_milliseconds_and_stall_nobody(vxgate, sink, raw):
    gw = vxgate()
    for n, command in enumerate(hostile.REDOS_COMMANDS, 1):
        client = raw(gw.port)
        client.cmd(b"EHLO hostile.test")
        if command.startswith(b"RCPT"):
            assert client.cmd(b"MAIL FROM:<a@x.test>")[0] == 250
        parallel = Parallel(gw.port)
        code, text, elapsed = timed(client, command + b"\r\n", parallel)
        assert elapsed < 0.5, (command[:60], elapsed)
        assert 200 <= code < 300 or 500 <= code < 600, (command[:60], code, text)
        assert client.cmd(b"NOOP")[0] == 250      # the session goes on
        assert parallel.result()[0] == 250, (command[:60], parallel.reply)
        assert len(sink.wait_for(n, 30)) == n
        client.close()


def test_bad_xforward_gets_501_with_its_reason_and_the_session_goes_on(vxgate, sink, raw):
    gw = vxgate()
    client = raw(gw.port)
    client.cmd(b"EHLO postfix.test")
    for n, command in enumerate(hostile.XFORWARD_BAD, 1):
        code, text = client.cmd(command)
        assert code == 501 and text.startswith("5.5.4 ") and "XFORWARD" in text, (command[:60], code, text)
        assert client.cmd(b"MAIL FROM:<a@x.test>")[0] == 250
        assert client.cmd(b"RCPT TO:<b@x.test>")[0] == 250
        assert client.cmd(b"DATA")[0] == 354
        assert client.cmd(b"Subject: after %d\r\n\r\nbody\r\n.\r\n" % n)[0] == 250
    assert len(sink.wait_for(len(hostile.XFORWARD_BAD), 30)) == len(hostile.XFORWARD_BAD)
    assert all(not XFORWARD_KEYS & set(row.client) for row in Message.select())
    assert all(set(seen) <= {"HELO"} for seen in sink.xforward_seen)   # nothing refused was relayed


def test_xforward_values_postfix_sends_are_kept_relayed_and_checked(vxgate, sink, raw):
    """[UNAVAILABLE] is what Postfix sends for locally submitted mail: 250, not an internal error."""
    gw = vxgate()
    client = raw(gw.port)
    client.cmd(b"EHLO postfix.test")
    sent = [b"NAME=[UNAVAILABLE] ADDR=[UNAVAILABLE] PORT=[UNAVAILABLE] PROTO=ESMTP HELO=[UNAVAILABLE] SOURCE=LOCAL",
            b"NAME=mail.client.test ADDR=IPV6:2001:db8::7 PORT=65535 PROTO=ESMTP HELO=a+2Bb IDENT=x+3Dy"]
    for n, attrs in enumerate(sent, 1):
        assert client.cmd(b"XFORWARD " + attrs)[0] == 250
        client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
        assert client.cmd(b"Subject: x%d\r\n\r\nbody\r\n.\r\n" % n)[0] == 250
        assert len(sink.wait_for(n, 30)) == n
        expected = dict(item.split("=", 1) for item in attrs.decode().split())
        assert sink.xforward_seen[-1] == expected


def test_hostile_header_blocks_cost_milliseconds_and_give_one_clean_line(vxgate, sink, raw):
    gw = vxgate()
    blocks = hostile.SLOW_HEADER_BLOCKS + [b"Subject: %s\r\n" % s.encode() for s in hostile.ENCODED_SUBJECTS]
    for n, block in enumerate(blocks, 1):
        client = raw(gw.port)
        client.cmd(b"EHLO t")
        client.cmd(b"MAIL FROM:<a@x.test>")
        client.cmd(b"RCPT TO:<b@x.test>")
        assert client.cmd(b"DATA")[0] == 354
        parallel = Parallel(gw.port)
        code, text, elapsed = timed(client, block + b"\r\nbody\r\n.\r\n", parallel)
        assert code == 250, (block[:60], code, text)
        assert elapsed < 10, (block[:60], elapsed)   # the whole pipeline: 0.8 s for 1 MB here, was minutes
        assert parallel.result()[0] == 250, (block[:60], parallel.reply)
        assert len(sink.wait_for(2 * n, 30)) == 2 * n
        client.close()
    for row in Message.select():
        for value in (row.subject, row.header_from, row.message_id):
            assert len(value) <= 500 and value.isprintable(), (row.subject[:60], value[:60])
    subjects = {row.subject for row in Message.select()}
    assert "Invoice Bcc: x@attacker.test" in subjects and "a b" in subjects


def test_intake_refusal_answers_mail_with_its_4xx(raw):
    """The seam for a gateway that cannot store mail now (Intake.refusal, in gateway.py)."""
    from salmon_app.config import SocketAddr
    from salmon_app.receiver import Reply, SmtpServer

    class Intake:
        answer = Reply(451, "4.3.0 Spool not writable, try again later")

        def refusal(self):
            return self.answer

    intake = Intake()
    server = SmtpServer(SocketAddr("127.0.0.1", 0), intake, hostname="t.test", max_connections=2,
                        max_message_size=10000, max_recipients=5, max_line=998, idle_timeout=10)
    server.start()
    try:
        client = raw(server.port)
        client.cmd(b"EHLO t")
        assert client.cmd(b"MAIL FROM:<a@x.test>") == (451, "4.3.0 Spool not writable, try again later")
        intake.answer = None
        assert client.cmd(b"MAIL FROM:<a@x.test>")[0] == 250
    finally:
        server.stop()


# ---------------------------------------------------------------- DATA a buffer at a time
def _receive(stream, buffer_size, slow=False, max_size=10000, monkeypatch=None):
    """What Session._receive makes of ``stream``: (refusal code or the error, the bytes
    written, the header block, what is left for the next command)."""
    import io
    import types
    from salmon_app import receiver
    session = receiver.Session.__new__(receiver.Session)
    session.server = types.SimpleNamespace(max_line=998, max_message_size=max_size)
    session.rfile = io.BufferedReader(io.BytesIO(stream), buffer_size)
    written = []
    writer = types.SimpleNamespace(size=0)

    def write(data):
        written.append(data)
        writer.size += len(data)
    writer.write = write
    envelope = types.SimpleNamespace(headers=None)
    if slow:
        monkeypatch.setattr(receiver, "_clean_lines", lambda buffered, limit: None)
    try:
        problem = session._receive(writer, envelope)
        outcome = problem.code if problem else None
    except ConnectionError as exc:
        outcome = type(exc).__name__
    finally:
        if slow:
            monkeypatch.undo()
    return outcome, b"".join(written), envelope.headers, session.rfile.read()


def _random_streams(count, seed=14):
    import random
    rng = random.Random(seed)
    pieces = [b"a", b"x" * 70, b".", b"..", b"\r\n", b"\n", b"\r", b".\r\n", b"\r\n.\r\n", b"\n.\n",
              b"y" * 990, b"z" * 1200, b"Subject: r\r\n", b"\r\n\r\n"]
    for _ in range(count):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        yield b"Subject: r\r\n\r\n" + body + rng.choice([b"\r\n.\r\n", b"\r\n.\r\nQUIT\r\n", b""])


def test_data_read_a_buffer_at_a_time_is_the_same_as_line_by_line(monkeypatch):
    """Every hostile DATA stream and 2,000 random ones, at buffer sizes that cut lines anywhere:
    the same refusal, bytes, headers and next command as the line-by-line reading."""
    streams = list(hostile.DATA_STREAMS) + list(_random_streams(2000))
    for stream in streams:
        for size in (16, 100, 1003, 65536):
            for max_size in (10000, 200):
                fast = _receive(stream, size, max_size=max_size)
                assert fast == _receive(stream, size, slow=True, max_size=max_size, monkeypatch=monkeypatch), \
                    (stream[:200], size, max_size)
    smuggled = _receive(hostile.DATA_STREAMS[4], 65536)
    assert smuggled[0] == 550 and smuggled[3] == b""      # LF.LF ended nothing: all of it was DATA


def test_the_header_read_a_buffer_at_a_time_is_kept_as_line_by_line(monkeypatch):
    """The header block is kept for the record from whole buffers too: the same first 64 KB
    of it, line for line, as the line-by-line reading keeps, wherever buffers cut it."""
    import random
    rng = random.Random(7)
    lines = [b"Subject: r\r\n", b"X: " + b"p" * 900 + b"\r\n", b".dot: x\r\n", b" folded\r\n", b"\r\n"]
    streams = list(hostile.DATA_HEADERS)
    streams += [b"".join(rng.choice(lines) for _ in range(rng.randint(0, 120))) + b"\r\n.\r\n" for _ in range(300)]
    for stream in streams:
        for size in (16, 100, 1003, 65536):
            fast = _receive(stream, size, max_size=10 ** 6)
            assert fast == _receive(stream, size, slow=True, max_size=10 ** 6, monkeypatch=monkeypatch), \
                (stream[:200], size)
    kept = _receive(hostile.DATA_HEADERS[0], 65536, max_size=10 ** 6)[2]
    assert 65536 <= len(kept) < 65536 + 1000 and kept.endswith(b"\r\n") and b"Subject: late" not in kept


def test_one_bad_line_late_in_a_buffer_costs_one_fallback_not_one_per_line(monkeypatch):
    from salmon_app import receiver
    calls = []
    real = receiver._clean_lines

    def counted(buffered, limit):
        calls.append(len(buffered))
        return real(buffered, limit)
    for stream in hostile.DATA_ONE_BAD_LINE_LATE:
        del calls[:]
        monkeypatch.setattr(receiver, "_clean_lines", counted)
        fast = _receive(stream, 65536, max_size=50000)
        monkeypatch.undo()
        assert len(calls) <= 4, len(calls)          # not one per line (32,000)
        assert fast == _receive(stream, 65536, slow=True, max_size=50000, monkeypatch=monkeypatch)
        assert fast[0] in (550, 552)


def test_the_plain_header_reader_reads_what_the_parser_reads():
    """headers.fields reads plain blocks itself (a twentieth of a small message's CPU was the
    standard library's parser) and leaves the rest to the parser: where it reads, it must
    give what the parser gives, on the hostile blocks, the corpus and random blocks of tricky
    lines; and it must not leave every block to the parser."""
    import glob
    import os
    import random
    from email import policy
    from email.parser import BytesHeaderParser

    from support.mail import CORPUS

    from salmon_app import headers
    blocks = hostile.SLOW_HEADER_BLOCKS + [b"Subject: %s\r\n" % s.encode() for s in hostile.ENCODED_SUBJECTS]
    blocks += [("Subject: %s\r\n\r\n" % s).encode("utf-8", "surrogateescape") for s in hostile.HEADER_VALUES]
    for path in glob.glob(os.path.join(CORPUS, "**", "*.eml"), recursive=True):
        with open(path, "rb") as handle:
            data = handle.read(1 << 20).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        blocks.append(data[:data.find(b"\r\n\r\n") + 4])
    lines = [b"Subject: x", b" folded", b"\tfolded", b"From: a", b"From a", b"X:y", b":x", b"Bad Name: x", b"",
             b"A\x00B: x", b"Caf\xe9: x", b"Subject : x", b"\x7fDel: x", b"From: \xff\xfe", b"To: a\rb",
             b"Message-ID: <a@b>", b"Subject:", b" ", b"x"]
    rng = random.Random(5)
    for _ in range(20000):
        chosen = [rng.choice(lines) for _ in range(rng.randint(0, 6))]
        blocks.append(b"".join(line + rng.choice([b"\r\n", b"\r\n", b"\n", b"\r", b""]) for line in chosen))
    read = 0
    for block in blocks:
        items = headers._plain_items(block)
        if items is not None:
            read += 1
            assert items == list(BytesHeaderParser(policy=policy.compat32).parsebytes(block).raw_items()), block[:200]
    assert read > len(blocks) // 10
    assert headers._plain_items(CLEAN) is not None and headers._plain_items(b"From x\r\nSubject: y\r\n") is None
