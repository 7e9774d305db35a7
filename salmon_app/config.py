"""The vxgate configuration file: an INI file with [Root], [MailD] and [Quarantine] sections.

The format is the one of the product in the specification (``shared/reference/config.md``):
case-insensitive names, ``;``/``#`` comments, quoted values, comma lists or repeated lines,
Yes/No booleans, ``1h30m`` durations, ``10mb`` sizes, ``None`` for unlimited, sockets as
``IP:port`` or a UNIX socket path. Every parameter has a default here (``SCHEMA``) and in the
sample ``config/vxgate.ini``; anything wrong stops start-up with ``file:line: problem``.
We parse by hand because configparser forgets line numbers and refuses repeated keys.
"""
import dataclasses
import os
import re
import socket

SECTIONS = ("Root", "MailD", "Quarantine")


class ConfigError(Exception):
    """A configuration problem, already phrased as ``file:line: what is wrong, what is expected``."""


@dataclasses.dataclass(frozen=True)
class SocketAddr:
    """Where to listen or connect: TCP (host, port) or a UNIX socket path."""
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self):
        return bool(self.path)

    def __str__(self):
        if self.path:
            return self.path
        return "[%s]:%d" % (self.host, self.port) if ":" in self.host else "%s:%d" % (self.host, self.port)


# ---------------------------------------------------------------- value types
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([wdhms]?)")
_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|k|mb|m|gb|g)?", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
               "g": 1024 ** 3, "gb": 1024 ** 3}
_BOOLS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}


def parse_bool(text):
    try:
        return _BOOLS[text.lower()]
    except KeyError:
        raise ValueError("expected Yes or No") from None


def parse_duration(text):
    text = text.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError("expected a duration such as 30s, 0.5s, 5m, 1h30m or 2d")
    return total


def parse_size(text):
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError("expected a size such as 512kb, 10mb or 1gb")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower() if match.group(2) else None])


def parse_socket(text, allow_hostname=False):
    text = text.strip()
    if text.startswith("/"):
        return SocketAddr(path=text)
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError("expected IP:port (127.0.0.1:10025, [::1]:10025) or an absolute UNIX socket path")
    host, port = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    if not allow_hostname:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            raise ValueError("%r is not an IP address; expected IP:port or a UNIX socket path" % host) from None
    port = int(port)
    if not 0 < port < 65536:
        raise ValueError("port %d out of range 1-65535" % port)
    return SocketAddr(host=host, port=port)


def parse_host_socket(text):
    """A server given as host, host:port, IP, [IPv6]:port or a UNIX path (port 25 by default)."""
    text = text.strip()
    if text.startswith("/") or re.search(r":\d+$", text):
        return parse_socket(text, allow_hostname=True)
    if not re.fullmatch(r"[\w.-]+|\[[0-9a-fA-F:.]+\]", text):
        raise ValueError("expected a host name, host:port, an IP address or a UNIX socket path")
    return SocketAddr(host=text.strip("[]"), port=25)


def _unquote(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def split_list(text):
    """``"a", "b"`` or ``a, b`` -> ["a", "b"]; commas inside quotes are kept."""
    items = [item for item in re.findall(r'"[^"]*"|\'[^\']*\'|[^,]+', text)]
    return [_unquote(item) for item in items if _unquote(item)]


@dataclasses.dataclass
class Param:
    section: str
    name: str
    kind: str            # bool, int, duration, size, str, secret, socket, hostsocket, list, choice, path
    default: object
    doc: str
    choices: tuple = ()
    minimum: float = None
    allow_none: bool = False   # "None" means unlimited / disabled

    def convert(self, raw):
        value = _unquote(raw) if self.kind != "list" else raw
        if self.allow_none and value.lower() == "none":
            return None
        if self.kind == "bool":
            return parse_bool(value)
        if self.kind == "int":
            try:
                result = int(value)
            except ValueError:
                raise ValueError("expected a whole number") from None
        elif self.kind == "duration":
            result = parse_duration(value)
        elif self.kind == "size":
            result = parse_size(value)
        elif self.kind == "socket":
            return parse_socket(value) if value else None
        elif self.kind == "hostsocket":
            return parse_host_socket(value) if value else None
        elif self.kind == "list":
            return split_list(raw)
        elif self.kind == "choice":
            for choice in self.choices:
                if choice.lower() == value.lower():
                    return choice
            raise ValueError("expected one of " + ", ".join(self.choices))
        else:
            return value
        if self.minimum is not None and result < self.minimum:
            raise ValueError("must be at least %s" % self.minimum)
        return result


def _p(section, name, kind, default, doc, **kw):
    return Param(section, name, kind, default, doc, **kw)


FILE_TYPES = ("exe, dll, scr, com, msi, sys, cpl, lnk, js, jse, vbs, vbe, wsf, hta, ps1, bat, cmd, jar, "
              "doc, docx, docm, dot, dotm, xls, xlsx, xlsm, xlsb, ppt, pptx, pptm, rtf, pdf, "
              "zip, rar, 7z, gz, cab, iso, img, html, htm")

SCHEMA = [
    # [Root]: the analyser
    _p("Root", "UseVxcube", "bool", False, "Send attachments to Dr.Web vxCube for analysis."),
    _p("Root", "VxcubeApiAddress", "str", "", "vxCube API server: host, host:port or https://host[:port]/ (required with UseVxcube)."),
    _p("Root", "VxcubeApiKey", "secret", "", "vxCube API key (never logged)."),
    _p("Root", "VxcubeVerifyTls", "bool", True, "Verify the vxCube server's TLS certificate."),
    _p("Root", "VxcubeCaFile", "str", "", "CA bundle for a private vxCube certificate (empty: system CAs)."),
    _p("Root", "VxcubeSendMode", "choice", "Attachments", "Attachments: vxgate extracts files of VxcubeFileTypes and uploads each; Message: upload the whole .eml and let vxCube split it.", choices=("Attachments", "Message")),
    _p("Root", "VxcubeFileTypes", "list", [t.strip() for t in FILE_TYPES.split(",")], "File types (by content, then by name) that are analysed."),
    _p("Root", "VxcubePlatforms", "list", [], "Platform codes to analyse on (empty: the ones vxCube suggests for the sample)."),
    _p("Root", "VxcubeAnalysisTime", "duration", 60.0, "Run time of each analysis; its first poll comes once that time is up.", minimum=1),
    _p("Root", "VxcubeTimeout", "duration", 900.0, "Give up on an analysis after this long: the file is unchecked.", minimum=1),
    _p("Root", "VxcubeRequestTimeout", "duration", 30.0, "Time-out of one HTTP request to vxCube.", minimum=0.1),
    _p("Root", "VxcubeRetryAttempts", "int", 5, "Attempts per HTTP request (connection errors, time-outs, 429, 5xx).", minimum=1),
    _p("Root", "VxcubeRetryMin", "duration", 1.0, "First back-off between HTTP attempts (jittered, doubling).", minimum=0),
    _p("Root", "VxcubeRetryMax", "duration", 30.0, "Longest back-off between HTTP attempts.", minimum=0),
    _p("Root", "VxcubePollInterval", "duration", 5.0, "Wait between polls of an analysis after the first, which comes VxcubeAnalysisTime after its start (doubles up to 6x; each wait is spread by ±20% so that analyses started together are not polled together).", minimum=0.05),
    _p("Root", "VxcubeWorkers", "int", 4, "Threads talking to vxCube.", minimum=1),
    _p("Root", "VxcubeQueueSize", "int", 1000, "Files waiting for a vxCube worker before new ones wait in the database.", minimum=1),
    _p("Root", "VxcubeCacheTtl", "duration", 86400.0, "Keep clean/suspicious/dangerous verdicts by SHA-256 this long (unchecked is never cached).", minimum=0),
    _p("Root", "VxcubeMaxFiles", "int", 20, "Most distinct files of one message that are analysed; the others are unchecked (cause too-many-files).", minimum=1),
    _p("Root", "VxcubeUploadBudget", "int", 100, "New vxCube uploads per envelope sender and per client address (XFORWARD) within VxcubeUploadBudgetWindow; beyond it files are unchecked (cause budget). 0: no limit.", minimum=0),
    _p("Root", "VxcubeUploadBudgetWindow", "duration", 3600.0, "The period VxcubeUploadBudget counts uploads over.", minimum=1),
    _p("Root", "VxcubeMaxHold", "duration", 14400.0, "How long a message unchecked because of an outage (quota, budget, vxcube-error, timeout) is deferred before VxcubeHoldFallback (ctx.vxcube.hold_expired).", minimum=0),
    _p("Root", "VxcubeHoldFallback", "choice", "Quarantine", "What the default hook does with such a message after VxcubeMaxHold.", choices=("Quarantine", "Accept")),
    _p("Root", "LogTarget", "choice", "Auto", "Where the log goes: File (LogFile), Syslog (facility mail, LogSyslogAddress), Stderr (journald); Auto: Stderr under systemd, else File.", choices=("Auto", "File", "Syslog", "Stderr")),
    _p("Root", "LogFormat", "choice", "Text", "Text lines, or Json: one object per line (time, level, logger, queue_id, event, message, fields).", choices=("Text", "Json")),
    _p("Root", "LogLevel", "choice", "INFO", "Least important lines logged: DEBUG, INFO, WARNING or ERROR.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    _p("Root", "LogFile", "str", "logs/vxgate.log", "The log file with LogTarget = File (reopened when logrotate moves it)."),
    _p("Root", "LogSyslogAddress", "socket", "/dev/log", "Syslog with LogTarget = Syslog: a UNIX socket path, or IP:port for UDP."),
    # [Root]: the service
    _p("Root", "PidFile", "str", "run/smtp.pid", "Pid file of the running daemon: salmon start/stop, vxgate reload and doctor find vxgate through it."),
    _p("Root", "NodeName", "str", "", "This node's name in the records of a shared database: it resumes, relays and deletes only its own messages (empty: the host name)."),
    _p("Root", "Processes", "int", 1, "Processes that receive, check and relay mail, each with its own workers and Lua runtimes, on the same sockets, database and spool folder (0: one per CPU core; see README, Several processes).", minimum=0),
    _p("Root", "PinProcesses", "bool", True, "Keep each mail process on one CPU core of its own (the processes of a set take the cores in turn), with threads that do not preempt one another (SCHED_BATCH); its hook processes share its core when every core has a mail process, else they run on any. Python's interpreter lock costs far less CPU that way (see README, Several processes)."),
    _p("Root", "User", "str", "", "Started as root, vxgate switches to this user before it opens any file (empty: refuse to run as root without --allow-root)."),
    # [MailD]: SMTP mode
    _p("MailD", "SmtpSocket", "socket", "127.0.0.1:10025", "Where Postfix hands mail to vxgate (content_filter)."),
    _p("MailD", "SmtpSenderRelay", "socket", "127.0.0.1:10026", "Postfix's re-injection socket that takes checked mail back."),
    _p("MailD", "SmtpHook", "str", "config/hooks/default.lua", "Lua policy: code or a path to a .lua file (empty: accept everything)."),
    _p("MailD", "SmtpHookTimeout", "duration", 5.0, "Time one hook call may take; a hook still running 0.5 s later is killed with its process.", minimum=0.01),
    _p("MailD", "SmtpHookMemory", "size", 64 * 1024 ** 2, "Memory of one Lua runtime.", minimum=1024 ** 2),
    _p("MailD", "SmtpHookErrorAction", "choice", "Tempfail", "What a failing hook means for the message.", choices=("Tempfail", "Accept", "Quarantine")),
    _p("MailD", "SmtpHookLists", "str", "config/hooks/lists", "The only folder whose files hooks may read (drweb.load_array, load_set): regular files, at most SmtpHookMemory (empty: none)."),
    _p("MailD", "SmtpAdminAddress", "str", "", "Who is told when vxgate quarantines a message it already accepted (empty: only the log)."),
    _p("MailD", "SmtpHostname", "str", "", "Name in the greeting and in notices (empty: this host's FQDN)."),
    _p("MailD", "SmtpMaxMessageSize", "size", 64 * 1024 ** 2, "Largest message accepted (advertised with SIZE).", minimum=1024),
    _p("MailD", "SmtpMaxConnections", "int", 100, "Simultaneous SMTP connections; more are answered 421.", minimum=1),
    _p("MailD", "SmtpMaxRecipients", "int", 1000, "Recipients per transaction; more are answered 452.", minimum=1),
    _p("MailD", "SmtpMaxLineLength", "int", 998, "Longest line (without CRLF) of a command or of the message (RFC 5321: 998).", minimum=78),
    _p("MailD", "SmtpIdleTimeout", "duration", 300.0, "Close a connection that sends nothing for this long.", minimum=1),
    _p("MailD", "SmtpReplyTimeout", "duration", 60.0, "Longest wait for the outcome before answering 250 and finishing in the background (keep well below Postfix's 600 s).", minimum=0),
    _p("MailD", "SmtpWorkers", "int", 4, "Threads that route and check messages, and as many hook processes (the Lua runtimes, taken in turn).", minimum=1),
    _p("MailD", "SmtpRelayWorkers", "int", 8, "Threads that relay to the next hop.", minimum=1),
    _p("MailD", "SmtpQueueSize", "int", 1000, "Messages waiting for a stage before new ones wait in the database.", minimum=1),
    _p("MailD", "SmtpRelayTimeout", "duration", 60.0, "Time-out of each command to the next hop.", minimum=0.1),
    _p("MailD", "SmtpRelayRetryMin", "duration", 60.0, "First back-off after the next hop failed (jittered, doubling).", minimum=0),
    _p("MailD", "SmtpRelayRetryMax", "duration", 1800.0, "Longest back-off between relay attempts.", minimum=0),
    _p("MailD", "SmtpRelayMaxAge", "duration", 5 * 86400.0, "Bounce what the next hop has not accepted after this long.", minimum=0),
    _p("MailD", "SmtpErrorLimit", "int", 5, "Internal errors a message vxgate owns may meet before it is set aside as held and SmtpAdminAddress is told.", minimum=1),
    _p("MailD", "SmtpRecoveryLimit", "int", 3, "Start-ups a message may be in flight at before it is set aside as poisonous.", minimum=1),
    _p("MailD", "RepackPassword", "secret", "None", "Archive password for repacked threats: None, Plain(<password>) or HMAC(<secret>)."),
    # [MailD]: BCC mode
    _p("MailD", "BccSocket", "socket", None, "Where blind copies arrive (empty: BCC mode off)."),
    _p("MailD", "BccMonitorAddresses", "list", [], "Recipients the BCC socket accepts: addresses or @domain (required with BccSocket)."),
    _p("MailD", "BccReporterAddress", "str", "", "Sender of the reports (also the SMTP AUTH user)."),
    _p("MailD", "BccReporterPassword", "secret", "", "SMTP AUTH password of BccReporterAddress (never logged)."),
    _p("MailD", "BccReportRecipientAddress", "str", "", "The administrator who receives the reports."),
    _p("MailD", "BccSmtpServer", "hostsocket", None, "MTA that sends the reports: host, host:port, IP or UNIX socket."),
    _p("MailD", "BccSmtpTls", "choice", "Auto", "TLS to BccSmtpServer: Auto (STARTTLS when offered; implicit TLS on port 465), Implicit, StartTls (required), Off (the only setting that lets the password travel in cleartext).", choices=("Auto", "Implicit", "StartTls", "Off")),
    _p("MailD", "BccSmtpVerifyTls", "bool", True, "Verify the certificate of BccSmtpServer against its host name or IP address (No: encrypt without checking)."),
    _p("MailD", "BccSmtpCaFile", "str", "", "CA certificates (PEM file or directory) for a private BccSmtpServer certificate (empty: system CAs)."),
    _p("MailD", "BccAttachOriginal", "bool", False, "Attach the copy to the report as original.zip, protected by RepackPassword (the identifier is the queue id)."),
    _p("MailD", "BccTemplateDir", "str", "", "Directory with bcc_report.txt and bcc_report.html (empty: config/templates)."),
    _p("MailD", "MetricsSocket", "socket", "127.0.0.1:9425", "Where Prometheus scrapes /metrics: IP:port (empty: off)."),
    # [Quarantine]: storage
    _p("Quarantine", "SpoolDir", "str", "run/spool", "Directory of the message files (created 0700)."),
    _p("Quarantine", "DatabasePath", "str", "run/quarantine.db", "SQLite database of the message records (one node; ignored when DatabaseUrl is set)."),
    _p("Quarantine", "DatabaseUrl", "secret", "", "Database shared by several nodes: postgresql://user:password@host[:port]/dbname (or sqlite:///path). Empty: DatabasePath. The password is never logged."),
    _p("Quarantine", "DatabaseBusyTimeout", "duration", 30.0, "How long a write waits for a database lock held by another process before it counts as a storage failure.", minimum=0.1),
    _p("Quarantine", "DeliveredRetention", "duration", 7 * 86400.0, "Keep records of delivered, discarded and tempfailed mail and closed BCC copies this long.", minimum=0),
    _p("Quarantine", "QuarantineRetention", "duration", 30 * 86400.0, "Keep quarantined, rejected, failed and held messages and reported BCC copies this long.", minimum=0),
    _p("Quarantine", "KeepDeliveredMessages", "bool", False, "Keep the files of delivered mail (until DeliveredRetention) for export/release."),
    # [Quarantine]: the web console (vxgate web) and recipients' self-service
    _p("Quarantine", "WebSocket", "socket", "127.0.0.1:8425", "Where `vxgate web` serves the quarantine console: IP:port (empty: off)."),
    _p("Quarantine", "WebUsersFile", "str", "", "Console administrators and their password hashes (vxgate web add-user; mode 0600; empty: web-users beside the configuration file)."),
    _p("Quarantine", "WebTlsCert", "str", "", "PEM certificate (chain) for HTTPS on WebSocket (empty: plain HTTP, for loopback or a reverse proxy)."),
    _p("Quarantine", "WebTlsKey", "str", "", "PEM private key of WebTlsCert."),
    _p("Quarantine", "WebSecret", "secret", "", "Key that signs console sessions and recipients' links (never logged; empty: a random key per start, and no digest)."),
    _p("Quarantine", "WebBehindProxy", "bool", False, "The console is reached through one reverse proxy on this host: trust its X-Forwarded-For and X-Forwarded-Proto."),
    _p("Quarantine", "WebSessionLifetime", "duration", 8 * 3600.0, "An administrator's login lasts this long.", minimum=60),
    _p("Quarantine", "WebBaseUrl", "str", "", "The console's address as recipients reach it, for the links in digests (https://gateway.example:8425/)."),
    _p("Quarantine", "QuarantineDigest", "choice", "Off", "Send each recipient a digest of their newly quarantined mail with signed links: Off, Daily or Hourly (needs WebSecret and WebBaseUrl).", choices=("Off", "Daily", "Hourly")),
    _p("Quarantine", "DigestLinkLifetime", "duration", 7 * 86400.0, "How long a digest's link stays valid.", minimum=60),
    _p("Quarantine", "RecipientRelease", "list", ["suspicious:release", "unchecked:request", "none:request", "dangerous:request"], "What a recipient may do with their quarantined mail, per verdict: none, request (an administrator approves) or release."),
]
_BY_KEY = {(p.section.lower(), p.name.lower()): p for p in SCHEMA}


class Config:
    """Typed parameter values by name (``config.SmtpSocket``); built from defaults plus a file."""

    def __init__(self, values, path=None):
        self._values = values
        self.path = path

    def __getattr__(self, name):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes):
        values = dict(self._values)
        for name, value in changes.items():
            if name not in values:
                raise KeyError(name)
            values[name] = value
        return Config(values, self.path)

    def items(self):
        return self._values.items()


def defaults():
    values = {}
    for param in SCHEMA:
        default = param.default
        values[param.name] = param.convert(default) if isinstance(default, str) and param.kind in ("socket", "hostsocket") else default
    return values


def parse_text(text, filename="<config>"):
    """Parse INI text into a Config; raise ConfigError naming the file and line."""
    values = defaults()
    seen = {}
    section = None
    for lineno, line in enumerate(text.splitlines(), 1):
        where = "%s:%d" % (filename, lineno)
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ConfigError("%s: malformed section header %r, expected [Name]" % (where, stripped))
            name = stripped[1:-1].strip()
            matches = [s for s in SECTIONS if s.lower() == name.lower()]
            if not matches:
                raise ConfigError("%s: unknown section [%s], expected one of %s"
                                  % (where, name, ", ".join("[%s]" % s for s in SECTIONS)))
            section = matches[0]
            continue
        if "=" not in stripped:
            raise ConfigError("%s: expected 'Name = Value', got %r" % (where, stripped))
        if section is None:
            raise ConfigError("%s: parameter outside a section, expected a [Section] header first" % where)
        key, raw = (part.strip() for part in stripped.split("=", 1))
        raw = _strip_comment(raw)
        param = _BY_KEY.get((section.lower(), key.lower()))
        if param is None:
            raise ConfigError("%s: unknown parameter %r in [%s]%s" % (where, key, section, _suggest(section, key)))
        try:
            value = param.convert(raw)
        except ValueError as exc:
            raise ConfigError("%s: bad value %r for %s: %s" % (where, raw, param.name, exc)) from None
        if param.name in seen:
            if param.kind != "list":
                raise ConfigError("%s: %s given twice (first at line %d), expected it once"
                                  % (where, param.name, seen[param.name]))
            value = values[param.name] + value
        seen.setdefault(param.name, lineno)
        values[param.name] = value
    config = Config(values, filename)
    _check_together(config, seen, filename)
    _check_forms(config, seen, filename)
    return config


def _check_forms(config, seen, filename):
    """Values whose type is text but whose form is known: the vxCube URL, addresses, file types."""
    def fail(name, text):
        raise ConfigError("%s:%s: bad value for %s: %s" % (filename, seen.get(name, 0), name, text))
    if config.VxcubeApiAddress:
        from salmon_app.vxcube.client import api_base_url
        try:
            api_base_url(config.VxcubeApiAddress)
        except ValueError:
            fail("VxcubeApiAddress", "%r; expected host, host:port or https://host[:port]/ (http:// only for a "
                 "test emulator)" % config.VxcubeApiAddress)
    for name in ("SmtpAdminAddress", "BccReporterAddress", "BccReportRecipientAddress"):
        value = getattr(config, name)
        if value and not is_address(value):
            fail(name, "%r is not an e-mail address; expected local@domain.example" % value)
    for value in config.BccMonitorAddresses:
        if not (is_address(value) or (value.startswith("@") and _is_domain(value[1:]))):
            fail("BccMonitorAddresses", "%r; expected an address (monitor@bcc.example) or @domain" % value)
    unknown = [t for t in config.VxcubeFileTypes if t.lower() not in known_file_types()]
    if unknown:
        fail("VxcubeFileTypes", "unknown file type%s %s; use the names vxgate detects (exe, dll, docm, pdf, zip, "
             "...: `vxgate sample-config` lists the defaults)" % ("s" if len(unknown) > 1 else "",
                                                                 ", ".join(repr(t) for t in unknown)))


def _is_domain(text):
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and all(0 < len(label) <= 63 and label.replace("-", "").isalnum()
                                    and label.isascii() and not label.startswith("-") for label in labels)


def is_address(text):
    """local@domain, without display names or brackets (what SMTP's MAIL FROM/RCPT TO carry)."""
    local, at, domain = text.rpartition("@")
    if not at or not local or len(local) > 64 or any(c.isspace() or c in '<>()[],;:"\\' for c in local):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in domain else socket.AF_INET, domain[1:-1].removeprefix("IPv6:"))
            return True
        except OSError:
            return False
    return _is_domain(domain)


def known_file_types():
    """Type names vxgate can detect: by content (puremagic, refined for PE/ZIP/OLE) and the defaults."""
    global _KNOWN_TYPES
    if _KNOWN_TYPES is None:
        import puremagic.main
        from salmon_app.vxcube import extract
        names = {t.strip() for t in FILE_TYPES.split(",")} | {"ole", "apk", "jar"}
        names |= set(extract._ALIASES.values()) | extract._OLE_EXTENSIONS
        names |= {name for _, *kinds in extract._OOXML_DIRS for name in kinds}
        for table in (puremagic.main.magic_header_array, puremagic.main.magic_footer_array,
                      puremagic.main.extension_only_array):
            names |= {entry.extension.lstrip(".").lower() for entry in table if entry.extension}
        _KNOWN_TYPES = frozenset(names)
    return _KNOWN_TYPES


_KNOWN_TYPES = None


def _strip_comment(raw):
    """Drop a trailing `` ; comment`` / `` # comment`` outside quotes."""
    quote = None
    for i, char in enumerate(raw):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in ";#" and (i == 0 or raw[i - 1].isspace()):
            return raw[:i].rstrip()
    return raw


def _suggest(section, key):
    known = [p.name for p in SCHEMA if p.section == section]
    close = [name for name in known if name.lower().startswith(key.lower()[:4])]
    return "; did you mean %s?" % " or ".join(close[:3]) if close else "; see config/vxgate.ini for the parameters"


def _check_together(config, seen, filename):
    """Rules that involve several parameters."""
    def fail(name, text):
        raise ConfigError("%s:%s: %s" % (filename, seen.get(name, 0), text))
    if config.UseVxcube and not config.VxcubeApiAddress:
        fail("UseVxcube", "UseVxcube = Yes needs VxcubeApiAddress (the vxCube API server)")
    if config.UseVxcube and not config.VxcubeApiKey:
        fail("UseVxcube", "UseVxcube = Yes needs VxcubeApiKey")
    if config.SmtpReplyTimeout >= 600:
        fail("SmtpReplyTimeout", "SmtpReplyTimeout must stay below Postfix's 600 s smtp_data_done_timeout, "
             "or Postfix re-sends the message")
    if config.BccSocket:
        if not config.UseVxcube:
            fail("BccSocket", "BccSocket is set, so UseVxcube = Yes is required: BCC mode analyses with vxCube")
        for name in ("BccMonitorAddresses", "BccReportRecipientAddress", "BccSmtpServer", "BccReporterAddress"):
            if not getattr(config, name):
                fail("BccSocket", "BccSocket is set, so %s is required" % name)
    if not re.fullmatch(r"(?i)none|plain\(.+\)|hmac\(.+\)", config.RepackPassword.strip()):
        fail("RepackPassword", "bad RepackPassword, expected None, Plain(<password>) or HMAC(<secret>)")
    if config.SmtpSocket is not None and config.SmtpSocket in (config.SmtpSenderRelay, config.BccSmtpServer):
        fail("SmtpSenderRelay", "vxgate would relay to its own SmtpSocket %s (a mail loop); SmtpSenderRelay is "
             "the MTA's re-injection socket" % config.SmtpSocket)
    if config.SmtpSocket is None:
        fail("SmtpSocket", "SmtpSocket is required: IP:port or a UNIX socket path")
    if config.MetricsSocket is not None and config.MetricsSocket.is_unix:
        fail("MetricsSocket", "MetricsSocket must be IP:port (Prometheus scrapes over HTTP), or empty for off")
    if config.SmtpSenderRelay is None:
        fail("SmtpSenderRelay", "SmtpSenderRelay is required: IP:port or a UNIX socket path")
    if config.DatabaseUrl:
        from salmon_app.storage import engine
        if "DatabasePath" in seen:
            fail("DatabaseUrl", "set DatabaseUrl or DatabasePath, not both: DatabaseUrl names the shared "
                 "database; remove DatabasePath (vxgate db copy moves a SQLite quarantine into it)")
        try:
            engine.parse(config.DatabaseUrl)
        except engine.LocationError as exc:
            fail("DatabaseUrl", str(exc))
    if config.NodeName and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", config.NodeName):
        fail("NodeName", "NodeName must be letters, digits, '.', '_' or '-' (at most 63), like a host name")
    _check_web(config, fail)


def _check_web(config, fail):
    """The console's and the digest's parameters (salmon_app/web)."""
    if config.WebSocket is not None and config.WebSocket.is_unix:
        fail("WebSocket", "WebSocket must be IP:port (browsers speak TCP), or empty for off")
    if bool(config.WebTlsCert) != bool(config.WebTlsKey):
        fail("WebTlsCert", "WebTlsCert and WebTlsKey go together: give both for HTTPS, or neither")
    if config.QuarantineDigest != "Off":
        for name in ("WebSecret", "WebBaseUrl"):
            if not getattr(config, name):
                fail("QuarantineDigest", "QuarantineDigest = %s needs %s (the links are signed with WebSecret "
                     "and point at WebBaseUrl)" % (config.QuarantineDigest, name))
    if config.WebBaseUrl and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", config.WebBaseUrl):
        fail("WebBaseUrl", "bad WebBaseUrl %r, expected https://host[:port]/[path]" % config.WebBaseUrl)
    try:
        recipient_release(config)
    except ValueError as exc:
        fail("RecipientRelease", "bad RecipientRelease: %s" % exc)


RECIPIENT_RIGHTS = ("none", "request", "release")


def recipient_release(config):
    """{verdict: none|request|release} from RecipientRelease (verdicts not named: none)."""
    from salmon_app.verdict import Verdict
    rights = {v.label: "none" for v in Verdict}
    for item in config.RecipientRelease:
        verdict, colon, right = (part.strip().lower() for part in item.partition(":"))
        if not colon or verdict not in rights or right not in RECIPIENT_RIGHTS:
            raise ValueError("%r; expected verdict:right, verdict one of %s, right one of %s"
                             % (item, ", ".join(rights), ", ".join(RECIPIENT_RIGHTS)))
        rights[verdict] = right
    return rights


SYSTEM_CONFIG = "/etc/vxgate/vxgate.ini"


def default_path():
    """$VXGATE_CONFIG, else the installed /etc/vxgate/vxgate.ini when it exists, else the sample."""
    return os.environ.get("VXGATE_CONFIG") or (SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else "config/vxgate.ini")


def load(path=None):
    """Load the file named by ``path`` or ``default_path()``; built-in defaults if the sample is absent."""
    path = path or default_path()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if os.environ.get("VXGATE_CONFIG") or path != "config/vxgate.ini":
            raise ConfigError("%s:0: configuration file not found" % path) from None
        return Config(defaults(), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("%s:0: cannot read the configuration: %s" % (path, exc)) from None
    return parse_text(text, path)


def render_sample():
    """The sample file: every parameter with its documentation and default, commented out."""
    lines = ["; vxgate configuration. Every line below shows a parameter's default.",
             "; Uncomment and change what you need; names are case-insensitive.", ""]
    for section in SECTIONS:
        lines.append("[%s]" % section)
        for param in (p for p in SCHEMA if p.section == section):
            lines.append("; " + param.doc)
            lines.append("; %s = %s" % (param.name, format_value(param, param.default)))
        lines.append("")
    return "\n".join(lines)


def format_value(param, value):
    if value is None:
        return ""
    if param.kind == "bool":
        return "Yes" if value else "No"
    if param.kind == "list":
        return ", ".join(value)
    if param.kind == "duration":
        return _format_duration(value)
    if param.kind == "size":
        return _format_size(value)
    return str(value)


def _format_duration(seconds):
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return "%d%s" % (seconds // size, unit)
    return "%gs" % seconds


def _format_size(size):
    for unit, factor in (("gb", 1024 ** 3), ("mb", 1024 ** 2), ("kb", 1024)):
        if size % factor == 0:
            return "%d%s" % (size // factor, unit)
    return "%db" % size
