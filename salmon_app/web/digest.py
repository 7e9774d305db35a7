"""Mail to recipients: the quarantine digest, and the answer to a release request.

``QuarantineDigest`` (Hourly or Daily) makes the daemon's sweeper call ``digest_hook``: each
recipient of quarantined mail not listed in a digest yet gets one plain-text message with
the list (date, sender, subject, verdict, what they may do) and one signed link to their
page (links.py). Each listed message gets a ``digest`` Event, so a restart never lists it
twice and ``vxgate quarantine show`` says who was told. The console tells a recipient the
outcome of a request with ``outcome_note``. Both go out like vxgate's notices (outbox.py),
and every piece of text from mail goes through ``compose.one_line`` (attacker text).
"""
import email.utils
import logging
import socket
import time
from email.mime.text import MIMEText

from salmon_app import config as vxconfig
from salmon_app.storage import models
from salmon_app.compose import POLICY, one_line, put, to_bytes
from salmon_app.storage.models import Event, Message, Recipient
from salmon_app.quarantine import render
from salmon_app.web import links

LOG = logging.getLogger("vxgate")
PERIODS = {"Hourly": 3600.0, "Daily": 86400.0}
MOST = 200          # messages listed in one digest (the page shows them all)
WHAT = {"release": "you can release it", "request": "you can ask for its release", "none": "ask your administrator"}


def hostname(config):
    return config.SmtpHostname or socket.getfqdn()


def _mail(config, recipient, subject, lines):
    msg = MIMEText("\n".join(lines) + "\n", "plain", "utf-8", policy=POLICY)
    msg["From"] = "MAILER-DAEMON@%s (vxgate quarantine)" % hostname(config)
    put(msg, "To", recipient)
    put(msg, "Subject", subject)
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname(config))
    msg["Auto-Submitted"] = "auto-generated"
    return to_bytes(msg)


def waiting(config):
    """{recipient: [Message]} of quarantined mail not listed in a digest yet."""
    listed = Event.select(Event.message).where(Event.kind == "digest")
    rows = list(Message.select().where(Message.state == models.QUARANTINED, Message.mode == "smtp",
                                       Message.has_file == True, Message.id.not_in(listed),  # noqa: E712
                                       Message.created >= time.time() - config.QuarantineRetention)
                .order_by(Message.created))
    by_id = {r.id: r for r in rows}
    found = {}
    for start in range(0, len(rows), 500):
        chunk = [r.id for r in rows[start:start + 500]]
        for rcpt in Recipient.select(Recipient.message, Recipient.address).where(Recipient.message.in_(chunk)):
            found.setdefault(rcpt.address.lower(), []).append(by_id[rcpt.message])
    return found


def digest_mail(config, recipient, rows):
    rights = vxconfig.recipient_release(config)
    lines = ["%d message%s addressed to you %s held in quarantine by vxgate on %s." % (
        len(rows), "" if len(rows) == 1 else "s", "is" if len(rows) == 1 else "are", hostname(config)), ""]
    for row in rows[:MOST]:
        lines += ["%s  from %s" % (render.when(row.created, seconds=False), one_line(row.mail_from or "<>", 100)),
                  "  Subject: %s" % one_line(row.subject, 120),
                  "  Verdict: %s (%s)" % (row.verdict, WHAT[rights.get(row.verdict, "none")]), ""]
    if len(rows) > MOST:
        lines += ["... and %d more on the page below." % (len(rows) - MOST), ""]
    lines += ["See them and act (this link is yours alone and works for %s):" % render.duration(config.DigestLinkLifetime),
              links.url(config, recipient), "",
              "Never forward this message: the link opens your quarantine."]
    return _mail(config, recipient, "Quarantine digest: %d message%s held for you" % (len(rows), "" if len(rows) == 1 else "s"), lines)


def send_digests(config, store_own):
    """Send every waiting digest through ``store_own(mode, mail_from, rcpt_to, data, parent=, subject=)``;
    returns how many were sent."""
    sent = 0
    for recipient, rows in sorted(waiting(config).items()):
        queue_id = store_own("notice", "", [recipient], digest_mail(config, recipient, rows), parent=None,
                             subject="quarantine digest for %s" % recipient)
        with models.writing():
            for row in rows:
                models.log_event(row.id, "digest", "listed in the digest %s to %s" % (queue_id, recipient))
        LOG.info("%s: quarantine digest to %s listing %d message(s)", queue_id, recipient, len(rows))
        sent += 1
    return sent


def digest_hook(config_of, store_own, clock=time.monotonic):
    """A sweeper hook sending digests every hour or day (QuarantineDigest; read at each round, so a
    reload turns it on or off). The first round after start sends what is waiting."""
    state = {"due": clock()}

    def hook():
        config = config_of()
        period = PERIODS.get(config.QuarantineDigest)
        if period is None or clock() < state["due"]:
            return
        state["due"] = clock() + period
        try:
            send_digests(config, store_own)
        except Exception:
            LOG.exception("quarantine digest failed; trying again in %ds", period)
    return hook


def outcome_note(config, recipient, row, approved, link):
    verb = "approved: the message was released to you" if approved else "refused by an administrator"
    lines = ["Your request to release this message was %s." % verb, "",
             "Received: %s" % render.when(row.created, seconds=False),
             "From:     %s" % one_line(row.mail_from or "<>", 100),
             "Subject:  %s" % one_line(row.subject, 120), ""]
    if link:
        lines += ["Your quarantine: %s" % link]
    return _mail(config, recipient, "Release request %s" % ("approved" if approved else "refused"), lines)
