"""Messages vxgate writes itself: text from received mail made safe, and a strict email policy.

Reports, administrator notices, bounces and repack notes carry text taken from received mail
(a Subject, a file name, an address, a next hop's reply): attacker text. ``one_line()`` turns
it into one harmless line before it goes into a header or a line of a body: every kind of
line break (CR, LF, U+2028, ...) becomes a space, other invisible characters (NUL, escape,
bidi overrides) become ``?``, and the length is bounded. Headers are then set with
``put()`` on messages built with ``POLICY`` (``email.policy.SMTP``, which refuses CR and LF
in a header value): a second line of defence that falls back to a placeholder, so a report
is always built and the administrator always hears about a dangerous file. That policy decodes
RFC 2047 words found in a value and writes what they decode to (CR/LF included) unescaped,
so ``put()`` breaks up ``=?`` (text from mail is already decoded) and checks the folded
result before using it.
"""
import email.policy
import logging
import re

LOG = logging.getLogger("vxgate")
POLICY = email.policy.SMTP
LIMIT = 256          # characters of one value: enough to recognise a Subject, short of any line limit
_BARE_BREAK = re.compile(r"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n")


def one_line(value, limit=LIMIT):
    """``value`` as one line of printable text, at most ``limit`` characters."""
    text = "" if value is None else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)
    text = " ".join(text.split())    # no runs of blanks that could pass for folding
    return text if len(text) <= limit else text[:limit - 3] + "..."


def put(message, name, value, placeholder="(unreadable)"):
    """Set header ``name``; when the policy refuses ``value``, set ``placeholder`` instead."""
    value = str(value).replace("=?", "= ?")
    try:
        if _BARE_BREAK.search(POLICY.fold(*POLICY.header_store_parse(name, value))[:-2]):
            raise ValueError("the value would start a header line of its own")
    except Exception as exc:    # whatever the reason, the message must still be built
        LOG.warning("header %s refused (%s); written as %r", name, one_line(exc), placeholder)
        value = placeholder
    message[name] = value


def to_bytes(message):
    """The message as CRLF bytes, ready for the spool and SMTP."""
    return message.as_bytes(policy=POLICY).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
