"""Relaying to the next hop: the stored bytes unchanged, the whole envelope, every reply kept.

``smtplib`` speaks the commands, but its ``data()``/``sendmail()`` rewrite line endings, so
the message body is dot-stuffed and sent here byte for byte (DKIM signatures stay valid).
Each relay worker thread keeps its connection open between messages (Postfix's re-injection
port allows it); TCP_NODELAY is set because a relay waits on every small reply. Credentials
(the BCC reporter's) go only over TLS, checked against the host name or IP address
configured, unless TLS is switched off explicitly: a server that offers no STARTTLS (or an
attacker who strips it) gets no password, and the message is deferred instead.
"""
import dataclasses
import logging
import os
import re
import smtplib
import socket
import ssl
import threading
import time

from salmon_app import sockio

LOG = logging.getLogger("vxgate.relay")
_QUEUED_AS = re.compile(r"queued as ([\w.-]+)", re.I)
_IDLE_CHECK = 5.0     # seconds of idleness after which a kept connection is checked with NOOP


@dataclasses.dataclass
class RelayResult:
    """Per-recipient outcome: (code, text) by address, and the next hop's queue id."""
    replies: dict
    data_reply: tuple = (0, "")
    next_hop_id: str = ""

    def recipients(self, kind):
        return self.by_kind()[kind]

    def by_kind(self):
        """{"ok": [...], "temp": [...], "perm": [...]}: the recipients by their reply, in order
        (temp: a 4xx, or no reply at all)."""
        kinds = {"ok": [], "temp": [], "perm": []}
        for address, (code, _) in self.replies.items():
            kinds["ok" if 200 <= code < 300 else "perm" if code >= 500 else "temp"].append(address)
        return kinds


class _Verbatim:
    """MAIL/RCPT with the address exactly as received: smtplib's quoteaddr() runs it through
    email.utils.parseaddr, which rewrites quoted local parts (and costs a parse per recipient)."""

    def mail(self, sender, options=()):
        self.encoding_for(options)
        self.putcmd("mail", "FROM:<%s>%s" % (sender, "".join(" " + o for o in options)))
        return self.getreply()

    def rcpt(self, recip, options=()):
        self.putcmd("rcpt", "TO:<%s>%s" % (recip, "".join(" " + o for o in options)))
        return self.getreply()

    def encoding_for(self, options):
        """UTF-8 commands for a SMTPUTF8 transaction, which the next hop must offer."""
        if any(o.lower() == "smtputf8" for o in options):
            if not self.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by the next hop")
            self.command_encoding = "utf-8"


class _Client(_Verbatim, smtplib.SMTP):
    """smtplib.SMTP that can also connect to a UNIX socket and sets TCP_NODELAY."""

    def __init__(self, address, timeout, local_hostname):
        self._address = address
        super().__init__(local_hostname=local_hostname, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        if self._address.is_unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self._address.path)
            return sock
        sock = socket.create_connection((host, port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class _ClientSSL(_Verbatim, smtplib.SMTP_SSL):
    """Implicit TLS (port 465) with the same verbatim envelope."""


class TlsRequired(smtplib.SMTPException):
    """Credentials would travel in cleartext: the connection is given up instead."""


class Relay:
    """Sends stored messages to one destination (SmtpSenderRelay, or BccSmtpServer for reports)."""

    def __init__(self, address, *, timeout, hostname, username=None, password=None, tls="auto",
                 ca_file="", verify=True):
        self.address, self.timeout, self.hostname = address, timeout, hostname
        self.username, self._password = username, password
        # "auto": STARTTLS when offered (implicit TLS on port 465); "implicit"; "starttls": required; "off"
        self.tls = "implicit" if tls == "auto" and not address.is_unix and address.port == 465 else tls
        self.ca_file, self.verify, self._ssl_context = ca_file, verify, None
        self._local = threading.local()

    def __repr__(self):
        return "Relay(%s)" % self.address   # never the password

    def send(self, mail_from, recipients, source, size, *, mail_params=None, rcpt_params=None, xforward=None):
        """Relay the message read from the binary file ``source`` (``size`` bytes).

        Connection problems become temporary replies for every recipient."""
        rcpt_params = rcpt_params or [{}] * len(recipients)
        args = (mail_from, recipients, source, size, mail_params or {}, rcpt_params, xforward or {})
        try:
            client, reused = self._connection()
            try:
                return self._transaction(client, *args)
            except (OSError, smtplib.SMTPServerDisconnected):
                if not reused or self._local.data_sent:
                    raise
                # a kept connection the next hop had closed (restart, idle time-out): nothing
                # was sent yet, so a fresh connection may try at once instead of deferring
                self.close()
                client, _ = self._connection()
                return self._transaction(client, *args)
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            text = "4.4.1 next hop %s: %s" % (self.address, describe(exc))
            return RelayResult({addr: (0, text) for addr in recipients}, (0, text))

    def _connection(self):
        """(client, reused): the thread's kept connection when it still answers, else a new one."""
        client = getattr(self._local, "client", None)
        if client is not None:
            if time.monotonic() - self._local.used < _IDLE_CHECK:
                return client, True
            try:
                if client.noop()[0] == 250:
                    return client, True
            except (OSError, smtplib.SMTPException):
                pass
            self.close()
        client = self.connect()
        self._local.client = client
        return client, False

    def connect(self):
        """A new connection: TLS as configured, EHLO done, logged in when credentials are set."""
        host, port = (self.address.path, 0) if self.address.is_unix else (self.address.host, self.address.port)
        if self.tls == "implicit":
            client = _ClientSSL(host, port, local_hostname=self.hostname, timeout=self.timeout,
                                context=self._context())
        else:
            client = _Client(self.address, self.timeout, self.hostname)
            client.connect(host, port)
            client._host = host     # starttls() checks the certificate against _host, which only __init__ sets
        try:
            client.ehlo_or_helo_if_needed()
            if self.tls == "starttls" or (self.tls == "auto" and client.has_extn("starttls")):
                client.starttls(context=self._context())   # raises when not offered
                client.ehlo()
            if self.username:
                # a UNIX socket never leaves the machine; anything else needs TLS unless it is "off"
                if self.tls != "off" and not self.address.is_unix and not isinstance(client.sock, ssl.SSLSocket):
                    raise TlsRequired("%s offers no STARTTLS: the password is not sent in cleartext "
                                      "(TLS setting Off would allow it)" % self.address)
                client.login(self.username, self._password or "")
            if not isinstance(client.sock, ssl.SSLSocket):
                # a plain connection, the usual one to a local Postfix: no poll() before each
                # send and read (salmon_app/sockio.py)
                sockio.kernel_timeouts(client.sock, self.timeout)
                if client.file is not None:
                    client.file.close()
                client.file = sockio.reader(client.sock)
        except Exception:
            client.close()
            raise
        return client

    def _context(self):
        if self._ssl_context is None:       # made once: loading CA certificates takes a while
            self._ssl_context = self.tls_context()
        return self._ssl_context

    def tls_context(self):
        """Certificates checked against the system CAs, or only ``ca_file`` (a PEM file or a
        directory of them) when set; nothing checked when ``verify`` is off."""
        try:
            if not self.ca_file:
                context = ssl.create_default_context()
            elif os.path.isdir(self.ca_file):
                context = ssl.create_default_context(capath=self.ca_file)
                for name in sorted(os.listdir(self.ca_file)):   # plain PEM files need no c_rehash links
                    if name.endswith((".pem", ".crt")):
                        context.load_verify_locations(cafile=os.path.join(self.ca_file, name))
            else:
                context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ValueError) as exc:     # ssl.SSLError is an OSError
            raise smtplib.SMTPException("cannot load the CA certificates %s: %s" % (self.ca_file, exc)) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def close(self):
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _transaction(self, client, mail_from, recipients, source, size, mail_params, rcpt_params, xforward):
        self._local.used = time.monotonic()
        self._local.data_sent = False
        attrs = ""
        if xforward and client.has_extn("xforward"):
            offered = set(client.esmtp_features["xforward"].upper().split())
            attrs = " ".join("%s=%s" % (k, v) for k, v in xforward.items() if k in offered)
        client.command_encoding = "ascii"
        options = _mail_options(client, mail_params, size)
        if client.has_extn("pipelining"):
            return self._pipelined(client, attrs, mail_from, options, recipients, rcpt_params, source)
        if attrs:
            client.docmd("XFORWARD", attrs)
        code, text = client.mail(mail_from, options)
        if code != 250:
            client.rset()
            return RelayResult({addr: (code, _text(text)) for addr in recipients}, (code, _text(text)))
        replies = {}
        for address, params in zip(recipients, rcpt_params):
            code, text = client.rcpt(address, _rcpt_options(client, params))
            replies[address] = (code, _text(text))
        accepted = [a for a, (code, _) in replies.items() if code in (250, 251)]
        if not accepted:
            client.rset()
            return RelayResult(replies)
        self._local.data_sent = True
        code, text = client.docmd("DATA")
        if code != 354:
            client.rset()
            replies.update({addr: (code, _text(text)) for addr in accepted})
            return RelayResult(replies, (code, _text(text)))
        return self._body(client, source, replies, accepted)

    def _body(self, client, source, replies, accepted):
        """After the 354: the message, and the next hop's reply for every accepted recipient."""
        _send_stuffed(client.sock, source)
        code, text = client.getreply()
        text = _text(text)
        replies.update({addr: (code, text) for addr in accepted})
        self._local.used = time.monotonic()
        match = _QUEUED_AS.search(text)
        return RelayResult(replies, (code, text), match.group(1) if match else "")

    def _pipelined(self, client, attrs, mail_from, options, recipients, rcpt_params, source):
        """The same transaction with XFORWARD, MAIL, every RCPT and DATA sent at once (RFC 2920,
        as Postfix's own client does): one round trip to the next hop instead of one per command."""
        client.encoding_for(options)
        lines = ["XFORWARD %s" % attrs] if attrs else []
        lines.append("MAIL FROM:<%s>%s" % (mail_from, "".join(" " + o for o in options)))
        lines += ["RCPT TO:<%s>%s" % (address, "".join(" " + o for o in _rcpt_options(client, params)))
                  for address, params in zip(recipients, rcpt_params)]
        lines.append("DATA")
        client.send("".join(line + "\r\n" for line in lines))
        if attrs:
            client.getreply()      # as docmd() had it: XFORWARD's reply does not matter
        code, text = client.getreply()
        mail_reply = (code, _text(text))
        replies = {}
        for address in recipients:
            rcpt_code, rcpt_text = client.getreply()
            replies[address] = (rcpt_code, _text(rcpt_text)) if code == 250 else mail_reply
        self._local.data_sent = True     # the connection answered: no silent retry from here on
        data_code, data_text = client.getreply()
        data_reply = (data_code, _text(data_text))
        accepted = [a for a, (c, _) in replies.items() if c in (250, 251)]
        if data_code == 354 and not accepted:
            client.send(".\r\n")         # a next hop that wants data for no recipient: none
            client.getreply()
        if code != 250 or not accepted or data_code != 354:
            client.rset()
            if code == 250 and accepted:
                replies.update({addr: data_reply for addr in accepted})
            return RelayResult(replies, mail_reply if code != 250 else data_reply if accepted else (0, ""))
        return self._body(client, source, replies, accepted)


def _mail_options(client, params, size):
    options = []
    if client.has_extn("size"):
        options.append("SIZE=%d" % size)
    body = params.get("BODY")
    if body and client.has_extn("8bitmime"):
        options.append("BODY=%s" % body)
    if params.get("SMTPUTF8"):
        options.append("SMTPUTF8")   # smtplib refuses it when the next hop lacks SMTPUTF8: a clear error
    if client.has_extn("dsn"):
        options += ["%s=%s" % (k, params[k]) for k in ("RET", "ENVID") if params.get(k)]
    return options


def _rcpt_options(client, params):
    if not client.has_extn("dsn"):
        return []
    return ["%s=%s" % (k, params[k]) for k in ("NOTIFY", "ORCPT") if params.get(k)]


def _send_stuffed(sock, source, batch=256 * 1024):
    """Stream ``source`` dot-stuffed, in batches, so a 30 MB message is never copied whole.

    A line is what ends in LF (as a file's lines are); a dot that starts one is doubled, with
    one ``replace`` per batch instead of a Python step per line (a third of a 100 KB message's
    relay time went to that loop)."""
    line_start, tail = True, b"\r\n"
    chunk = source.read(batch)
    while True:
        following = source.read(batch) if chunk else b""
        stuffed = chunk.replace(b"\n.", b"\n..")
        if line_start and chunk[:1] == b".":
            stuffed = b"." + stuffed
        line_start = chunk[-1:] == b"\n" if chunk else line_start
        tail = (tail + chunk)[-2:]
        if not following:
            # the end in the same send as the last batch (one system call less per message);
            # stored messages always end in CRLF, this guards hand-made ones
            sock.sendall(stuffed + (b"" if tail == b"\r\n" else b"\r\n") + b".\r\n")
            return
        sock.sendall(stuffed)
        chunk = following


def _text(text):
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def describe(exc):
    """One line about an SMTP or socket error, for replies, logs and doctor."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return "%s %s" % (exc.smtp_code, _text(exc.smtp_error))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS: certificate not trusted: %s" % exc.verify_message
    if isinstance(exc, ssl.SSLError):
        return "TLS failed: %s" % (exc.reason or exc)
    if isinstance(exc, BlockingIOError):      # SO_SNDTIMEO ran out (salmon_app/sockio.py)
        return "TimeoutError: timed out"

    return "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
