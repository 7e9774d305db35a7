"""Where the daemon's log goes (LogTarget) and in which shape (LogFormat), set from the config.

``file`` is ``LogFile`` (logrotate-friendly: reopened when rotated); ``syslog`` sends to
``LogSyslogAddress`` with facility ``mail`` and the tag ``vxgate[pid]``, so the mail log holds
a message's whole path beside Postfix's lines; ``stderr`` is for journald (systemd adds the
time). ``auto`` is ``stderr`` under systemd (``$JOURNAL_STREAM`` set) and ``file`` elsewhere.
``json`` writes one object per line with stable keys: ``time``, ``level``, ``logger``,
``queue_id`` (null for lines about no message), ``event`` (received, delivered, deferred,
summary, ... or ``log``), ``message``, and the fields of the line (``from``, ``to``,
``verdict``, ``action``, ``files``, ...). ``$VXGATE_LOGGING`` (a logging.config file) overrides
all of it, as the tests and the benchmark do.
"""
import datetime
import json
import logging
import logging.config
import logging.handlers
import os
import re
import socket
import stat
import sys
import time

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_TEXT = "vxgate[%(process)d]: %(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message text is kept whole, the fields beside it."""

    def format(self, record):
        data = {"time": datetime.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name,
                "queue_id": getattr(record, "queue_id", None) if getattr(record, "queue_id", "-") != "-" else None,
                "event": getattr(record, "event", None) or "log",
                "message": record.getMessage()}
        for key, value in (getattr(record, "fields", None) or {}).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class WatchedFileHandler(logging.handlers.WatchedFileHandler):
    """The standard library's WatchedFileHandler, looking for a rotated file at most once a
    second instead of with a ``stat`` before every line (a system call per message, and a
    hand-over of the interpreter lock under load). Lines written in that second go to the
    rotated file, which logrotate's ``delaycompress`` (config/logrotate) leaves in place."""

    CHECK_EVERY = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._checked = time.monotonic()

    def emit(self, record):
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY:
            self._checked = now
            self.reopenIfNeeded()
        logging.FileHandler.emit(self, record)


_SRCFILE = logging._srcfile
_CALLER_FIELDS = re.compile(r"pathname|filename|module|funcName|lineno|threadName|stack_info")


def _where_from(formats):
    """Look up the calling function and thread of each line only when ``formats`` (the text
    that holds the formats) show them: the logging HOWTO's "Optimization" settings. The
    lookup walked the stack for every line, a tenth of the logging cost of a message."""
    wanted = bool(_CALLER_FIELDS.search(formats))
    logging._srcfile = _SRCFILE if wanted else None
    logging.logThreads = wanted


def target(config, environ=os.environ):
    if config.LogTarget.lower() != "auto":
        return config.LogTarget.lower()
    return "stderr" if environ.get("JOURNAL_STREAM") else "file"


def configure(config, environ=os.environ):
    """Install the handler the configuration asks for on the root logger; returns it (None when
    $VXGATE_LOGGING named a logging.config file instead)."""
    override = environ.get("VXGATE_LOGGING")
    if override:
        logging.config.fileConfig(override, disable_existing_loggers=False)
        try:
            with open(override, encoding="utf-8", errors="replace") as handle:
                _where_from(handle.read())
        except OSError:
            pass
        return None
    _where_from(TEXT + SYSLOG_TEXT + JOURNAL_TEXT)
    handler = make_handler(config, environ)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.LogLevel)
    logging.getLogger("peewee").setLevel(logging.INFO)     # its DEBUG lines would print every query
    return handler


def make_handler(config, environ=os.environ):
    where = target(config, environ)
    if where == "file":
        directory = os.path.dirname(os.path.abspath(config.LogFile))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handler = WatchedFileHandler(config.LogFile)
        text = TEXT
    elif where == "syslog":
        address = config.LogSyslogAddress
        if address.is_unix:
            problem = _not_a_socket(address.path)
            if problem:     # no syslog daemon here: the log must not vanish with it
                print("vxgate: LogTarget = Syslog, but %s does not answer (%s); logging to stderr"
                      % (address.path, problem), file=sys.stderr)
                return _with_format(logging.StreamHandler(sys.stderr), config, JOURNAL_TEXT, "stderr")
            handler = logging.handlers.SysLogHandler(address.path, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        else:
            handler = logging.handlers.SysLogHandler((address.host, address.port),
                                                     facility=logging.handlers.SysLogHandler.LOG_MAIL,
                                                     socktype=socket.SOCK_DGRAM)
        text = SYSLOG_TEXT
    else:
        handler = logging.StreamHandler(sys.stderr)
        text = JOURNAL_TEXT
    return _with_format(handler, config, text, where)


def _not_a_socket(path):
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return exc.strerror
    return "" if stat.S_ISSOCK(mode) else "not a socket"


def _with_format(handler, config, text, where):
    if config.LogFormat.lower() == "json":
        formatter = JsonFormatter()
        if where == "syslog":      # syslog still wants its tag before the object
            formatter = _Tagged(formatter)
    else:
        formatter = logging.Formatter(text)
    handler.setFormatter(formatter)
    return handler


class _Tagged(logging.Formatter):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def format(self, record):
        return "vxgate[%d]: %s" % (record.process, self.inner.format(record))
