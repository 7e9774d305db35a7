"""Logging helpers: every line about a message starts with its queue id, secrets never appear.

``qlog(queue_id)`` returns a logger adapter for one message (PeekabooAV's habit: the job id
opens every line), so an administrator can ``grep QUEUEID logs/vxgate.log`` and see its life.
"""
import logging

LOG = logging.getLogger("vxgate")


class QueueLog(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        # the id opens the text line and is a field of its own for LogFormat = Json
        extra = kwargs.get("extra")
        kwargs["extra"] = dict(extra, queue_id=self.extra["queue_id"]) if extra else self.extra
        return "%s: %s" % (self.extra["queue_id"], msg), kwargs


def qlog(queue_id, logger=LOG):
    return QueueLog(logger, {"queue_id": queue_id or "-"})


class RedactFilter(logging.Filter):
    """Replaces configured secrets in any record, its traceback included; a last line of
    defence behind careful code."""

    def __init__(self, secrets=()):
        super().__init__()
        self.secrets = []
        self.add(secrets)

    def add(self, secrets):
        # longest first: a secret that contains another is replaced whole
        self.secrets = sorted(set(self.secrets) | {s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record):
        if self.secrets:
            text = record.getMessage()
            if self._found(text):
                record.msg, record.args = self._redact(text), ()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text and self._found(record.exc_text):
                record.exc_text = self._redact(record.exc_text)   # the formatter uses it as it is
        return True

    def _found(self, text):
        return any(secret in text for secret in self.secrets)

    def _redact(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def config_secrets(config):
    """Every secret of ``config`` as it may show up in a log line: the values of the secret
    parameters, and what ``Kind(...)`` values (``Plain(<password>)``, ``HMAC(<secret>)``) wrap."""
    from salmon_app.config import SCHEMA
    found = []
    for param in SCHEMA:
        value = getattr(config, param.name) if param.kind == "secret" else None
        if value and value != param.default:     # RepackPassword's default "None" is no secret
            found.append(value)
            if param.name == "DatabaseUrl":
                from salmon_app.storage import engine
                found += [p for p in (engine.password(value),) if p]
            kind, paren, rest = value.partition("(")
            if paren and kind.strip().isalpha() and rest.rstrip().endswith(")"):
                inner = rest.rstrip()[:-1]
                found += [inner, inner.strip()]
    return found


def install_redaction(secrets):
    """Attach the filter to every handler of the root logger (handlers see all loggers' records).

    Called again (a reload), it adds the secrets to the filter already there instead of
    stacking one more filter per reload; a secret replaced by a reload stays redacted."""
    handlers = logging.getLogger().handlers
    flt = next((f for h in handlers for f in h.filters if isinstance(f, RedactFilter)), None) or RedactFilter()
    flt.add(secrets)
    for handler in handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)
    return flt
