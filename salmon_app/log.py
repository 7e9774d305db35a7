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
    """Replaces configured secrets in any record; a last line of defence behind careful code."""

    def __init__(self, secrets=()):
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record):
        if self.secrets:
            text = record.getMessage()
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, "***")
                record.msg, record.args = text, ()
        return True


def install_redaction(secrets):
    """Attach the filter to every handler of the root logger (handlers see all loggers' records)."""
    flt = RedactFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
    return flt
