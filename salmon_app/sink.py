"""A small threaded SMTP server: the demo's and the tests' final destination ("next hop").

``SinkServer`` speaks enough ESMTP for Postfix and for vxgate's own relay: EHLO/HELO, MAIL,
RCPT, DATA, RSET, NOOP, VRFY, QUIT, XFORWARD (recorded) and, when ``require_auth`` is given,
AUTH PLAIN/LOGIN (credentials recorded in ``auth_seen``).  It is built on the standard
library only (``socketserver`` threads), never converts line endings, ends DATA only on
CRLF.CRLF and un-dot-stuffs lines that start with a dot, so ``SinkMessage.data`` holds the
message bytes exactly as the client meant them.  Replies can be scripted per recipient
(``rcpt_reply``), per transaction (``mail_reply``, ``data_reply``) or by a callable
(``on_data``) that can also forward the message elsewhere, which turns the sink into a
stand-in content filter.  Accepted messages land in ``messages``; ``wait_for(n, timeout)``
blocks until ``n`` of them arrived.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import socket
import socketserver
import threading
import time
from typing import Callable, Optional

__all__ = ["SinkMessage", "SinkServer", "AuthCredentials"]

Reply = tuple[int, str]

MAX_SIZE = 256 * 1024 * 1024  # advertised SIZE; also the longest line read


class AuthCredentials(tuple):
    """``(username, password)`` seen in an AUTH exchange; compares equal to a plain tuple.

    Also carries ``.mechanism`` ("PLAIN"/"LOGIN") and ``.ok`` (whether they matched).
    """

    def __new__(cls, username: str, password: str, mechanism: str = "", ok: bool = False):
        self = super().__new__(cls, (username, password))
        self.mechanism = mechanism
        self.ok = ok
        return self

    @property
    def username(self) -> str:
        return self[0]

    @property
    def password(self) -> str:
        return self[1]


@dataclasses.dataclass
class SinkMessage:
    """One completed DATA transaction."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    helo: str = ""
    esmtp: bool = False
    mail_options: list[str] = dataclasses.field(default_factory=list)
    rcpt_options: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    xforward: dict[str, str] = dataclasses.field(default_factory=dict)
    auth_user: Optional[str] = None
    peer: tuple = ()
    reply: Reply = (250, "2.0.0 Ok")
    received_at: float = 0.0

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _split_address(arg: str, keyword: str) -> tuple[Optional[str], list[str]]:
    """Parse ``FROM:<addr> PARAMS`` / ``TO:<addr> PARAMS``; None address on syntax error."""
    if arg[: len(keyword)].upper() != keyword:
        return None, []
    rest = arg[len(keyword):].lstrip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None, []
        address, params = rest[1:end], rest[end + 1:]
    else:  # tolerate a bare address
        parts = rest.split(None, 1)
        if not parts:
            return None, []
        address, params = parts[0], (parts[1] if len(parts) > 1 else "")
    return address, params.split()


class _Handler(socketserver.StreamRequestHandler):
    server: "_TCPServer"
    timeout = 120

    # -- plumbing ----------------------------------------------------------------------
    def _send(self, code: int, text: str, more: bool = False) -> None:
        sep = "-" if more else " "
        self.wfile.write(f"{code}{sep}{text}\r\n".encode("utf-8", "replace"))
        if not more:
            self.wfile.flush()

    def _reply(self, reply: Reply) -> None:
        code, text = reply
        lines = str(text).split("\n") or [""]
        for i, line in enumerate(lines):
            self._send(code, line, more=i < len(lines) - 1)

    def _readline(self) -> Optional[bytes]:
        line = self.rfile.readline(MAX_SIZE)
        if not line:
            return None
        return line

    # -- session -----------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sink._register(self.request)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.sink._unregister(self.request)

    def _reset(self) -> None:
        self.mail_from: Optional[str] = None
        self.mail_options: list[str] = []
        self.rcpt_tos: list[str] = []
        self.rcpt_options: dict[str, list[str]] = {}
        self.xforward: dict[str, str] = {}

    def handle(self) -> None:
        sink: SinkServer = self.server.sink
        sink.connections += 1
        self.helo = ""
        self.esmtp = False
        self.auth_user: Optional[str] = None
        self._reset()
        try:
            self._reply(sink.banner)
            while True:
                raw = self._readline()
                if raw is None:
                    return
                line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                sink.commands.append(line)
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                method = getattr(self, "smtp_" + verb, None)
                if method is None:
                    self._send(502, "5.5.2 Error: command not recognized")
                    continue
                if method(arg.strip()) is False:
                    return
        except (OSError, ValueError):
            return

    # -- commands ----------------------------------------------------------------------
    def smtp_EHLO(self, arg: str) -> None:
        sink: SinkServer = self.server.sink
        if not arg:
            self._send(501, "5.5.4 Syntax: EHLO hostname")
            return
        self.helo, self.esmtp = arg, True
        self._reset()
        lines = [
            sink.hostname,
            "PIPELINING",
            f"SIZE {MAX_SIZE}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE",
        ]
        if sink.require_auth:
            lines.append("AUTH PLAIN LOGIN")
        for i, text in enumerate(lines):
            self._send(250, text, more=i < len(lines) - 1)

    def smtp_HELO(self, arg: str) -> None:
        if not arg:
            self._send(501, "5.5.4 Syntax: HELO hostname")
            return
        self.helo, self.esmtp = arg, False
        self._reset()
        self._send(250, self.server.sink.hostname)

    def smtp_NOOP(self, arg: str) -> None:
        self._send(250, "2.0.0 Ok")

    def smtp_RSET(self, arg: str) -> None:
        self._reset()
        self._send(250, "2.0.0 Ok")

    def smtp_VRFY(self, arg: str) -> None:
        self._send(252, "2.0.0 Cannot VRFY user")

    def smtp_QUIT(self, arg: str) -> bool:
        self._send(221, "2.0.0 Bye")
        return False

    def smtp_XFORWARD(self, arg: str) -> None:
        if not self.helo:
            self._send(503, "5.5.1 Error: send HELO/EHLO first")
            return
        for item in arg.split():
            key, _, value = item.partition("=")
            self.xforward[key.upper()] = value
        self.server.sink.xforward_seen.append(dict(self.xforward))
        self._send(250, "2.0.0 Ok")

    def smtp_AUTH(self, arg: str) -> None:
        sink: SinkServer = self.server.sink
        if not sink.require_auth:
            self._send(502, "5.5.1 Error: authentication not enabled")
            return
        if self.auth_user is not None:
            self._send(503, "5.5.1 Error: already authenticated")
            return
        parts = arg.split()
        if not parts:
            self._send(501, "5.5.4 Syntax: AUTH mechanism")
            return
        mech = parts[0].upper()
        initial = parts[1] if len(parts) > 1 else None

        def challenge(prompt: str) -> Optional[str]:
            self._send(334, prompt)
            resp = self._readline()
            if resp is None:
                raise OSError("connection closed during AUTH")
            resp_s = resp.rstrip(b"\r\n").decode("ascii", "replace")
            return None if resp_s == "*" else resp_s

        def b64(text: str) -> bytes:
            return base64.b64decode(text.encode("ascii"), validate=True)

        try:
            if mech == "PLAIN":
                if initial is None or initial == "=":
                    initial = challenge("") if initial is None else ""
                    if initial is None:
                        self._send(501, "5.7.0 Authentication aborted")
                        return
                decoded = b64(initial).decode("utf-8")
                fields = decoded.split("\0")
                if len(fields) != 3:
                    self._send(501, "5.5.2 Cannot decode AUTH PLAIN response")
                    return
                username, password = fields[1], fields[2]
            elif mech == "LOGIN":
                if initial is None:
                    user_b64 = challenge(base64.b64encode(b"Username:").decode())
                else:
                    user_b64 = initial
                if user_b64 is None:
                    self._send(501, "5.7.0 Authentication aborted")
                    return
                pass_b64 = challenge(base64.b64encode(b"Password:").decode())
                if pass_b64 is None:
                    self._send(501, "5.7.0 Authentication aborted")
                    return
                username, password = b64(user_b64).decode("utf-8"), b64(pass_b64).decode("utf-8")
            else:
                self._send(504, "5.5.4 Unrecognized authentication type")
                return
        except (binascii.Error, UnicodeDecodeError):
            self._send(501, "5.5.2 Cannot decode response")
            return
        ok = (username, password) == tuple(sink.require_auth)
        sink.auth_seen.append(AuthCredentials(username, password, mech, ok))
        if ok:
            self.auth_user = username
            self._send(235, "2.7.0 Authentication successful")
        else:
            self._send(535, "5.7.8 Error: authentication failed")

    def smtp_MAIL(self, arg: str) -> None:
        sink: SinkServer = self.server.sink
        if not self.helo:
            self._send(503, "5.5.1 Error: send HELO/EHLO first")
            return
        if self.mail_from is not None:
            self._send(503, "5.5.1 Error: nested MAIL command")
            return
        if sink.require_auth and self.auth_user is None:
            self._send(530, "5.7.0 Authentication required")
            return
        address, params = _split_address(arg, "FROM:")
        if address is None:
            self._send(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        reply = sink.mail_reply
        if callable(reply):
            reply = reply(address)
        if reply is not None and reply[0] >= 400:
            self._reply(reply)
            return
        self.mail_from, self.mail_options = address, params
        self._reply(reply or (250, "2.1.0 Ok"))

    def smtp_RCPT(self, arg: str) -> None:
        sink: SinkServer = self.server.sink
        if self.mail_from is None:
            self._send(503, "5.5.1 Error: need MAIL command")
            return
        address, params = _split_address(arg, "TO:")
        if not address:
            self._send(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        reply = sink.rcpt_reply.get(address)
        if reply is None:
            reply = sink.rcpt_reply.get(address.lower())
        if reply is not None and reply[0] >= 400:
            self._reply(reply)
            return
        self.rcpt_tos.append(address)
        self.rcpt_options[address] = params
        self._reply(reply or (250, "2.1.5 Ok"))

    def smtp_DATA(self, arg: str) -> None:
        sink: SinkServer = self.server.sink
        if self.mail_from is None:
            self._send(503, "5.5.1 Error: need MAIL command")
            return
        if not self.rcpt_tos:
            self._send(554, "5.5.1 Error: no valid recipients")
            return
        self._send(354, "End data with <CR><LF>.<CR><LF>")
        chunks: list[bytes] = []
        at_line_start = True  # the CRLF of the DATA command counts as the first CRLF
        while True:
            line = self._readline()
            if line is None:
                raise OSError("connection closed during DATA")
            if at_line_start and line == b".\r\n":
                break
            if at_line_start and line.startswith(b"."):
                line = line[1:]
            chunks.append(line)
            # Only a CRLF starts a new line: a bare LF never ends DATA nor un-stuffs a dot.
            at_line_start = line.endswith(b"\r\n")
        msg = SinkMessage(
            mail_from=self.mail_from,
            rcpt_tos=list(self.rcpt_tos),
            data=b"".join(chunks),
            helo=self.helo,
            esmtp=self.esmtp,
            mail_options=list(self.mail_options),
            rcpt_options=dict(self.rcpt_options),
            xforward=dict(self.xforward),
            auth_user=self.auth_user,
            peer=tuple(self.client_address),
            received_at=time.time(),
        )
        reply: Optional[Reply] = None
        if sink.on_data is not None:
            try:
                reply = sink.on_data(msg)
            except Exception as exc:  # a broken hook must not look like success
                reply = (451, f"4.3.0 sink hook failed: {exc!r}")
        if reply is None:
            data_reply = sink.data_reply
            reply = data_reply(msg) if callable(data_reply) else data_reply
        if reply is None:
            reply = (250, "2.0.0 Ok: queued as SINK%06d" % (len(sink.attempts) + 1))
        msg.reply = (int(reply[0]), str(reply[1]))
        sink._record(msg)
        self._reset()
        self._reply(msg.reply)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    sink: "SinkServer"


class SinkServer:
    """Threaded SMTP server recording what it receives.

    Attributes you can set at any time (also while running):

    ``rcpt_reply``  dict recipient -> (code, text) for RCPT TO (4xx/5xx rejects that recipient)
    ``mail_reply``  (code, text) or callable(sender) -> reply|None for MAIL FROM
    ``data_reply``  (code, text) or callable(SinkMessage) -> reply|None after the final dot
    ``on_data``     callable(SinkMessage) -> reply|None, called first (e.g. to forward mail)

    Recorded: ``messages`` (accepted with 2xx), ``attempts`` (every finished DATA, any reply),
    ``auth_seen`` (AuthCredentials, compare equal to ``(user, password)``), ``xforward_seen``,
    ``commands`` (raw command lines), ``connections`` (count).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        require_auth: Optional[tuple[str, str]] = None,
        hostname: str = "sink.test",
    ) -> None:
        self.host = host
        self._requested_port = port
        self.require_auth = require_auth
        self.hostname = hostname
        self.banner: Reply = (220, f"{hostname} ESMTP test sink")
        self.rcpt_reply: dict[str, Reply] = {}
        self.mail_reply: Optional[Reply | Callable[[str], Optional[Reply]]] = None
        self.data_reply: Optional[Reply | Callable[[SinkMessage], Optional[Reply]]] = None
        self.on_data: Optional[Callable[[SinkMessage], Optional[Reply]]] = None
        self.messages: list[SinkMessage] = []
        self.attempts: list[SinkMessage] = []
        self.auth_seen: list[AuthCredentials] = []
        self.xforward_seen: list[dict[str, str]] = []
        self.commands: list[str] = []
        self.connections = 0
        self._cond = threading.Condition()
        self._server: Optional[_TCPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return self._server.server_address[1]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> "SinkServer":
        if self._server is not None:
            return self
        server = _TCPServer((self.host, self._requested_port), _Handler)
        server.sink = self
        self._server = server
        self._requested_port = server.server_address[1]  # keep the port across restarts
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"smtp-sink-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._clients_lock:
            clients = list(self._clients)
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "SinkServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- results -----------------------------------------------------------------------
    def _register(self, sock: socket.socket) -> None:
        with self._clients_lock:
            self._clients.add(sock)

    def _unregister(self, sock: socket.socket) -> None:
        with self._clients_lock:
            self._clients.discard(sock)

    def _record(self, msg: SinkMessage) -> None:
        with self._cond:
            self.attempts.append(msg)
            if 200 <= msg.reply[0] < 300:
                self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[SinkMessage]:
        """Block until at least ``n`` messages were accepted; return them (TimeoutError else)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"sink on port {self.port}: {len(self.messages)} of {n} message(s) "
                        f"after {timeout}s ({len(self.attempts)} DATA attempt(s))"
                    )
                self._cond.wait(left)
            return list(self.messages)

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.attempts.clear()
            self.auth_seen.clear()
            self.xforward_seen.clear()
            self.commands.clear()
