"""The SMTP receiver: one thread per connection, every recipient kept, 250 only when durable.

Salmon's receivers keep one recipient, answer 250 when a handler fails and serve every
connection from one asyncore thread, so vxgate speaks ESMTP itself on the standard library's
sockets. DATA is streamed straight into a spool file (``SpoolWriter``); the end of DATA is
only CRLF.CRLF (no SMTP smuggling), bare LF and overlong lines are refused cleanly after the
whole message was read, and the reply comes from ``intake.accept()``, which answers 250 only
after the file is fsynced and its record committed, and 451 on any internal error.
"""
import dataclasses
import logging
import re
import select
import socket
import threading
import time

from salmon_app import shares as shares_module
from salmon_app import sockio
from salmon_app.smtp_syntax import XFORWARD_ATTRS, BadSyntax, printable, split_path, xforward_value

LOG = logging.getLogger("vxgate.smtpd")

# a C-level scan for a character the envelope must not hold (a generator per character cost
# more than the rest of MAIL and RCPT); one character class: linear, nothing to backtrack
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HEADER_KEPT = 65536     # bytes of a message's header kept in memory for its record (Subject, From...)
_MAIL_PARAMS = ("SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH")
_RCPT_PARAMS = ("NOTIFY", "ORCPT")


@dataclasses.dataclass
class Envelope:
    """What the SMTP transaction said about a message, kept exactly as received."""
    mail_from: str = ""
    rcpt_to: list = dataclasses.field(default_factory=list)
    helo: str = ""
    peer: tuple = ("", 0)
    xforward: dict = dataclasses.field(default_factory=dict)
    mail_params: dict = dataclasses.field(default_factory=dict)   # BODY, SMTPUTF8, RET, ENVID
    rcpt_params: list = dataclasses.field(default_factory=list)   # NOTIFY, ORCPT per recipient
    headers: bytes = b""       # the header block, for the record's subject/from/message-id

    @property
    def client(self):
        """The original client: XFORWARD when Postfix sent it, else our peer."""
        info = {"peer_ip": self.peer[0], "peer_port": self.peer[1], "helo": self.helo}
        info.update({k.lower(): v for k, v in self.xforward.items()})
        return info


class Reply(Exception):
    """An SMTP reply; raised inside a session to answer and continue."""

    def __init__(self, code, text):
        super().__init__(code, text)
        self.code, self.text = int(code), text

    def line(self):
        return reply_line(self.code, self.text)

    def __str__(self):
        return "%d %s" % (self.code, self.text)


def reply_line(code, text):
    """The bytes of a reply; a text of several lines becomes a multiline reply."""
    if "\n" not in text:
        return ("%d %s\r\n" % (code, text)).encode("utf-8", "replace")
    lines = text.split("\n")
    out = ["%d-%s" % (code, line) for line in lines[:-1]] + ["%d %s" % (code, lines[-1])]
    return ("\r\n".join(out) + "\r\n").encode("utf-8", "replace")


class SmtpServer:
    """Listens on a TCP or UNIX socket and runs a Session thread per connection (capped)."""

    def __init__(self, address, intake, *, hostname, max_connections, max_message_size,
                 max_recipients, max_line, idle_timeout, name="smtp", rcpt_check=None,
                 count_refused=lambda: None, count_error=lambda: None, session_ended=None, sock=None,
                 shares=None):
        self.address, self.intake, self.name = address, intake, name
        self.inherited = sock       # already listening (one of several processes on one socket)
        self.shares = shares        # the sessions of every process on it (salmon_app/shares.py)
        self.session_ended = session_ended      # called in the session's thread as it ends
        self.count_refused, self.count_error = count_refused, count_error     # for /metrics
        self.hostname = hostname
        self.max_connections, self.max_message_size = max_connections, max_message_size
        self.max_recipients, self.max_line, self.idle_timeout = max_recipients, max_line, idle_timeout
        self.rcpt_check = rcpt_check
        self.sessions = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sock = None
        self.thread = None

    def start(self):
        self.sock = self.inherited or listen(self.address)
        if self.inherited:
            # other processes accept on it too: a blocked accept() would not end when this one
            # stops (closing our descriptor leaves theirs), so wait in slices and look again
            self.sock.settimeout(0.5)
        self.thread = threading.Thread(target=self._accept_loop, name="%s-accept" % self.name, daemon=True)
        self.thread.start()
        LOG.info("%s: listening on %s", self.name, self.address)

    @property
    def port(self):
        return self.sock.getsockname()[1] if not self.address.is_unix else 0

    def _accept(self):
        if self.shares is None:
            return self.sock.accept()
        # woken with the other processes: the least busy one accepts first (salmon_app/shares.py)
        if not self.poller.poll(500):
            raise TimeoutError
        # a process with no room left lets one with room take it (else it would answer 421)
        pause = shares_module.MOST if len(self.sessions) >= self.max_connections else self.shares.head_start()
        if pause > 0:
            time.sleep(pause)
        try:
            return self.sock.accept()
        except BlockingIOError:
            raise TimeoutError from None     # another process took it

    def _accept_loop(self):
        if self.shares is not None:
            self.sock.settimeout(0.0)
            self.poller = select.poll()
            self.poller.register(self.sock, select.POLLIN)
            self.shares.open()
        while not self.stopping.is_set():
            try:
                conn, peer = self._accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                LOG.exception("%s: accept failed", self.name)
                continue
            if self.stopping.is_set():     # taken off a socket other processes go on serving
                _refuse(conn, b"421 4.3.2 %s Shutting down, try again later\r\n" % self.hostname.encode())
                return
            with self.lock:
                busy = len(self.sessions) >= self.max_connections
                session = None if busy else Session(self, conn, peer)
                if session:
                    self.sessions.add(session)
                    if self.shares is not None:
                        self.shares.change(+1)
            if busy:
                self.count_refused()
                _refuse(conn, b"421 4.7.0 %s Too many connections, try again later\r\n" % self.hostname.encode())
                continue
            threading.Thread(target=self._session, args=(session,), name="%s-session" % self.name, daemon=True).start()

    def _session(self, session):
        try:
            session.run()
        finally:
            if self.session_ended:
                self.session_ended()

    def stop(self, timeout=10.0):
        """Stop accepting, cut idle sessions, let sessions that wait for an outcome finish."""
        self.stopping.set()
        if self.shares is not None:
            self.shares.leave()
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
            if self.address.is_unix and not self.inherited:     # the master removes a shared one
                _unlink_quietly(self.address.path)
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.interrupt()
        deadline = time.monotonic() + timeout
        for session in sessions:
            session.done.wait(max(0.0, deadline - time.monotonic()))

    def forget(self, session):
        with self.lock:
            if session in self.sessions:
                self.sessions.discard(session)
                if self.shares is not None:
                    self.shares.change(-1)


def _clean_lines(buffered, limit):
    """The whole lines at the start of ``buffered`` (DATA, at a line start after CRLF) when
    every one is well formed: (bytes to consume, their data un-dot-stuffed, True if the end of
    DATA was among them); None when a line breaks a rule or none is complete (the caller
    then reads one line the slow way, which also refuses it as the rules say)."""
    if buffered[:3] == b".\r\n":
        return 3, b"", True
    end = buffered.rfind(b"\n")
    if end < 0:
        return None
    region = buffered if end + 1 == len(buffered) else buffered[:end + 1]
    taken, ended = end + 1, False
    dot = region.find(b"\n.")                # a line that starts with a dot: rare, and the end is one
    if dot >= 0:
        stop = region.find(b"\r\n.\r\n", max(dot - 1, 0))    # CRLF.CRLF, only ever after a CRLF
        if stop >= 0:
            region, taken, ended = region[:stop + 2], stop + 5, True
    lines = region.split(b"\r\n")            # one pass serves both checks below
    if region.count(b"\n") != len(lines) - 1:
        return None                           # a bare LF
    if len(region) >= limit - 1 and max(map(len, lines)) >= limit - 1:
        return None                           # an overlong line (limit counts the CRLF)
    data = region.replace(b"\n.", b"\n") if dot >= 0 else region     # RFC 5321 4.5.2
    if region[:1] == b".":
        data = data[1:]
    return taken, data, ended


def _header_lines(data, headers, kept):
    """Keep the header lines at the start of ``data`` (whole CRLF lines, un-dot-stuffed) as the
    line-by-line path keeps them: each line while fewer than ``HEADER_KEPT`` bytes are kept, up
    to the empty line that ends the header. Returns (still in the header, bytes kept)."""
    end = 0 if data[:2] == b"\r\n" else data.find(b"\r\n\r\n")
    block = data if end < 0 else data[:end + 2 if end else 0]
    if kept + len(block) <= HEADER_KEPT:
        if block:
            headers.append(block)
        return end < 0, kept + len(block)
    for line in block.split(b"\r\n")[:-1]:
        if kept >= HEADER_KEPT:
            break
        headers.append(line + b"\r\n")
        kept += len(line) + 2
    return end < 0, kept


def listen(address):
    if address.is_unix:
        _unlink_quietly(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address.path)
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
    sock.listen(1024)   # Salmon's backlog of 5 collapses under Postfix's parallel deliveries
    return sock


def _unlink_quietly(path):
    try:
        import os
        os.unlink(path)
    except OSError:
        pass


def _refuse(conn, line):
    try:
        conn.settimeout(2)
        conn.sendall(line)
    except OSError:
        pass
    finally:
        conn.close()


class Session:
    """One SMTP connection: greeting, EHLO, XFORWARD, transactions, QUIT."""

    def __init__(self, server, conn, peer):
        self.server, self.conn = server, conn
        self.peer = peer if isinstance(peer, tuple) else ("unix", 0)
        self.done = threading.Event()
        self.waiting = False      # inside intake.accept(): do not cut the connection
        self.lmtp = False
        self.helo = ""
        self.esmtp = False
        self.xforward = {}
        self.reset()

    def reset(self):
        self.envelope = None

    def interrupt(self):
        if not self.waiting:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def send(self, code, text):
        self.conn.sendall(reply_line(code, text))

    def run(self):
        server = self.server
        try:
            if self.conn.family != socket.AF_UNIX:
                self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sockio.kernel_timeouts(self.conn, server.idle_timeout)
            self.rfile = sockio.reader(self.conn)
            self.send(220, "%s ESMTP vxgate" % server.hostname)
            while not server.stopping.is_set():
                line = self.rfile.readline(max(server.max_line + 2, 4096))
                if not line:
                    break
                if not line.endswith(b"\n"):
                    self._drain_line()
                    self.send(500, "5.5.2 Line too long")
                    continue
                try:
                    if self.command(line.rstrip(b"\r\n")) == "quit":
                        break
                except Reply as reply:
                    if reply.code >= 500:
                        server.count_error()
                    self.conn.sendall(reply.line())
            else:
                self.send(421, "4.3.2 %s Service shutting down" % server.hostname)
        except (socket.timeout, BlockingIOError):      # reading, or sending (SO_SNDTIMEO)
            self._try_send(421, "4.4.2 %s Idle timeout, closing connection" % server.hostname)
        except (OSError, ValueError):
            pass   # the client went away; nothing was acknowledged that is not durable
        except Exception:
            LOG.exception("%s: session with %s failed", server.name, self.peer)
            self._try_send(421, "4.3.0 %s Internal error, closing connection" % server.hostname)
        finally:
            try:
                self.conn.close()
            except OSError:
                pass
            server.forget(self)
            self.done.set()

    def _try_send(self, code, text):
        try:
            self.send(code, text)
        except OSError:
            pass

    def _drain_line(self):
        limit = 1 << 16
        while True:
            chunk = self.rfile.readline(limit)
            if not chunk or chunk.endswith(b"\n"):
                return

    # ------------------------------------------------------------ commands
    def command(self, line):
        verb = line.split(b" ", 1)[0].upper()
        handler = getattr(self, "smtp_" + verb.decode("ascii", "replace"), None)
        if handler is None or not verb.isalpha():
            raise Reply(500, "5.5.2 Command not recognized")
        arg = line[len(verb):].strip()
        return handler(arg, line)

    def smtp_LHLO(self, arg, line):
        """LMTP (RFC 2033), for Postfix's lmtp transport to a UNIX SmtpSocket: one reply per recipient."""
        self.lmtp = True
        return self.smtp_EHLO(arg, line)

    def smtp_EHLO(self, arg, line):
        if not arg:
            raise Reply(501, "5.5.4 Syntax: EHLO hostname")
        self.helo, self.esmtp = arg.decode("utf-8", "replace"), True
        self.reset()
        server = self.server
        self.send(250, "\n".join([
            server.hostname, "PIPELINING", "SIZE %d" % server.max_message_size, "8BITMIME",
            "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "XFORWARD " + " ".join(XFORWARD_ATTRS)]))

    def smtp_HELO(self, arg, line):
        if not arg:
            raise Reply(501, "5.5.4 Syntax: HELO hostname")
        self.helo, self.esmtp = arg.decode("utf-8", "replace"), False
        self.reset()
        self.send(250, self.server.hostname)

    def smtp_XFORWARD(self, arg, line):
        if self.envelope is not None:
            raise Reply(503, "5.5.1 Error: XFORWARD not allowed inside a transaction")
        items = arg.split()
        if not items:
            raise Reply(501, "5.5.4 Syntax: XFORWARD attribute=value...")
        if len(items) > len(XFORWARD_ATTRS):
            raise Reply(501, "5.5.4 Too many XFORWARD attributes")
        update = {}   # all or nothing: a refused command changes no attribute
        for item in items:
            name, sep, value = item.partition(b"=")
            name = name.decode("ascii", "replace").upper()
            if name not in XFORWARD_ATTRS or not sep:
                raise Reply(501, "5.5.4 Bad XFORWARD attribute: %s" % printable(name))
            try:
                update[name] = xforward_value(name, value)
            except BadSyntax as exc:
                raise Reply(501, "5.5.4 %s" % exc) from None
        self.xforward.update(update)
        self.send(250, "2.0.0 Ok")

    def smtp_MAIL(self, arg, line):
        if self.envelope is not None:
            raise Reply(503, "5.5.1 Error: nested MAIL command")
        if not self.helo:
            raise Reply(503, "5.5.1 Error: send HELO/EHLO first")
        refusal = getattr(self.server.intake, "refusal", None)
        reply = refusal() if callable(refusal) else None
        if isinstance(reply, Reply):
            raise reply   # the gateway cannot store mail now (spool or database): a 4xx
        path, rest = self._path(line, b"MAIL FROM:")
        params = self._params(rest, _MAIL_PARAMS, utf8=False)
        if "SIZE" in params:
            size = params["SIZE"]
            if not (isinstance(size, str) and size.isascii() and size.isdigit() and len(size) <= 20):
                raise Reply(501, "5.5.4 Bad SIZE parameter")
            if int(size) > self.server.max_message_size:
                raise Reply(552, "5.3.4 Message size exceeds fixed limit of %d bytes" % self.server.max_message_size)
        if params.get("BODY", "7BIT").upper() not in ("7BIT", "8BITMIME"):
            raise Reply(555, "5.5.4 Unsupported BODY type")
        params.pop("AUTH", None)   # a trusted client's AUTH= is not ours to forward
        address = self._address(path, "SMTPUTF8" in params)
        self.envelope = Envelope(mail_from=address, helo=self.helo, peer=self.peer,
                                 xforward=dict(self.xforward), mail_params=params)
        self.send(250, "2.1.0 Ok")

    def smtp_RCPT(self, arg, line):
        if self.envelope is None:
            raise Reply(503, "5.5.1 Error: need MAIL command")
        path, rest = self._path(line, b"RCPT TO:")
        smtputf8 = "SMTPUTF8" in self.envelope.mail_params
        params = self._params(rest, _RCPT_PARAMS, utf8=smtputf8)
        address = self._address(path, smtputf8)
        if not address:
            raise Reply(553, "5.1.3 Empty recipient address")
        if len(self.envelope.rcpt_to) >= self.server.max_recipients:
            raise Reply(452, "4.5.3 Too many recipients")
        if self.server.rcpt_check:
            self.server.rcpt_check(address)   # raises Reply to refuse
        self.envelope.rcpt_to.append(address)
        self.envelope.rcpt_params.append(params)
        self.send(250, "2.1.5 Ok")

    def smtp_DATA(self, arg, line):
        if self.envelope is None:
            raise Reply(503, "5.5.1 Error: need MAIL command")
        if not self.envelope.rcpt_to:
            raise Reply(554, "5.5.1 Error: no valid recipients")
        envelope, self.envelope = self.envelope, None
        self.xforward = {}   # XFORWARD attributes last for one transaction
        writer = self.server.intake.open(envelope)
        try:
            self.send(354, "End data with <CR><LF>.<CR><LF>")
            problem = self._receive(writer, envelope)
            if problem:
                raise problem
            self.waiting = True
            reply = self.server.intake.accept(envelope, writer)
        except Reply as refusal:
            if not self.lmtp:
                raise
            reply = refusal
        finally:
            self.waiting = False
            writer.abort()
        # LMTP wants a reply per recipient; vxgate decides per message, so they are all the same
        self.conn.sendall(reply.line() * (len(envelope.rcpt_to) if self.lmtp else 1))

    def _receive(self, writer, envelope):
        """Stream DATA into the spool; return a Reply refusing the message, or None.

        Well-formed lines (every LF after a CR, none longer than the limit) go a buffer at a
        time (``_clean_lines``; the header's are also kept for the record: ``_header_lines``):
        the same bytes, without a Python step per line, which cost a third of a 100 KB
        message's CPU. Line by line wherever a line breaks a rule."""
        rfile, limit, max_size = self.rfile, self.server.max_line + 2, self.server.max_message_size
        problem = None
        after_crlf = True     # the end is CRLF.CRLF only: after a line that ended in CRLF
        in_headers, headers, kept = True, [], 0   # kept: a running count (a sum per line is quadratic)
        write = writer.write
        slow = 0        # bytes of a buffer the fast path refused: read line by line (once, not per line)
        while True:
            if slow <= 0 and after_crlf and problem is None:      # a line start after CRLF
                buffered = rfile.peek(1)
                clean = _clean_lines(buffered, limit)
                if clean is not None:
                    taken, data, ended = clean
                    if writer.size + len(data) <= max_size:
                        rfile.read(taken)
                        if in_headers:
                            in_headers, kept = _header_lines(data, headers, kept)
                        write(data)
                        if ended:
                            break
                        continue
                slow = len(buffered)
            line = rfile.readline(limit)
            slow -= len(line)
            if not line:
                raise ConnectionError("connection closed during DATA")
            if after_crlf and line == b".\r\n":
                break
            if line.endswith(b"\r\n"):
                after_crlf = True
            elif line.endswith(b"\n"):
                after_crlf = False
                problem = problem or Reply(550, "5.5.2 Message contains a bare LF line ending; "
                                                "send CRLF line endings (RFC 5321 2.3.8)")
            else:
                after_crlf = False
                if len(line) >= limit:
                    problem = problem or Reply(550, "5.5.2 Message has a line longer than %d characters "
                                                    "(RFC 5321 4.5.3.1.6)" % self.server.max_line)
            if line[:1] == b".":
                line = line[1:]
            if problem:
                continue
            if writer.size + len(line) > max_size:
                problem = Reply(552, "5.3.4 Message size exceeds fixed limit of %d bytes" % max_size)
                continue
            if in_headers:
                if line in (b"\r\n", b"\n"):
                    in_headers = False
                elif kept < HEADER_KEPT:
                    headers.append(line)
                    kept += len(line)
            write(line)
        envelope.headers = b"".join(headers)
        return problem

    @staticmethod
    def _path(line, prefix):
        try:
            return split_path(line, prefix)
        except BadSyntax as exc:
            raise Reply(501, "5.5.4 %s" % exc) from None

    @staticmethod
    def _params(raw, allowed, utf8):
        """ESMTP parameters (RFC 5321 4.1.2): no more than there are keywords, values printable
        ASCII, or UTF-8 under SMTPUTF8 (RFC 6531), so that they relay unchanged."""
        items = raw.split()
        if len(items) > len(allowed):
            raise Reply(501, "5.5.4 Too many parameters")
        utf8 = utf8 or any(item.upper() == b"SMTPUTF8" for item in items)
        params = {}
        for item in items:
            name, sep, value = item.partition(b"=")
            name = name.decode("ascii", "replace").upper()
            if name not in allowed:
                raise Reply(555, "5.5.4 Unsupported parameter %s" % printable(name))
            try:
                value = value.decode("utf-8" if utf8 else "ascii")
            except UnicodeDecodeError:
                raise Reply(501, "5.5.4 Bad %s value: %s" % (
                    name, "not UTF-8" if utf8 else "not ASCII (SMTPUTF8 was not given)")) from None
            if _CONTROL.search(value):
                raise Reply(501, "5.5.4 Bad %s value: control characters" % name)
            params[name] = value if sep else True
        return params

    def _address(self, raw, smtputf8):
        try:
            address = raw.decode("ascii")
        except UnicodeDecodeError:
            if not smtputf8:
                raise Reply(553, "5.6.7 Non-ASCII address requires SMTPUTF8") from None
            try:
                address = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Reply(553, "5.6.7 Address is not valid UTF-8") from None
        if _CONTROL.search(address):
            raise Reply(501, "5.1.7 Bad address syntax: control characters")
        if ":" in address and address.startswith("@"):
            address = address.split(":", 1)[1]   # drop an obsolete source route
        return address

    def smtp_RSET(self, arg, line):
        self.reset()
        self.xforward = {}
        self.send(250, "2.0.0 Ok")

    def smtp_NOOP(self, arg, line):
        self.send(250, "2.0.0 Ok")

    def smtp_VRFY(self, arg, line):
        self.send(252, "2.0.0 Cannot VRFY; send some mail")

    def smtp_HELP(self, arg, line):
        self.send(214, "2.0.0 See RFC 5321")

    def smtp_QUIT(self, arg, line):
        self.send(221, "2.0.0 Bye")
        return "quit"
