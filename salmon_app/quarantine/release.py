"""Release: re-send a message's stored original bytes to the next hop, without checking it again.

The bytes go, unchanged, through ``SmtpSenderRelay`` (Postfix's re-injection port, which does
not pass mail to vxgate again) to the original envelope recipients, or to the addresses given
with ``--to``; the original sender, MAIL parameters and XFORWARD attributes go with them.
A ``Release`` row is claimed before sending (state ``sending``) so two administrators cannot
release one message twice at once; after the next hop answered, the row is marked ``done``
and a ``released`` Event records who, when, to whom and the reply. A second release of the
same message only says when it was released, unless forced. Messages still in flight belong
to the daemon and are refused, as are messages whose file is gone.
"""
import dataclasses
import os
import socket
import time

from salmon_app.storage import models
from salmon_app.storage.models import Message
from salmon_app.quarantine import render
from salmon_app.quarantine.store import CLAIM_STALE, QuarantineError, Release, client_of, who
from salmon_app.relay import Relay, RelayResult
from salmon_app.smtp_syntax import relayable_xforward


@dataclasses.dataclass
class Outcome:
    queue_id: str
    status: str                 # released, partial, failed, already
    recipients: list = dataclasses.field(default_factory=list)
    result: RelayResult = None
    previous: Release = None    # the earlier release (status "already", or a forced one)

    def accepted(self):
        return self.result.recipients("ok") if self.result else []

    def refused(self):
        return [a for a in self.recipients if a not in self.accepted()]


def make_relay(config):
    return Relay(config.SmtpSenderRelay, timeout=config.SmtpRelayTimeout,
                 hostname=config.SmtpHostname or socket.getfqdn(), tls="off")


def refuse_reason(store, row, to=None):
    """Why ``row`` cannot be released (text), or None."""
    if row.state in models.OWNED:
        return ("%s: still in flight (state %s): vxgate is handling it; release works on finished "
                "messages (see vxgate quarantine show %s)" % (row.id, row.state, row.id))
    if row.mode == "bcc" and not to:
        return ("%s: a BCC copy is never delivered to its monitoring address; "
                "give --to ADDR to send it somewhere" % row.id)
    return store.file_problem(row, "release")


def release(store, queue_id, relay, *, to=None, force=False, user=None):
    """Release one message; returns an Outcome or raises QuarantineError."""
    row = store.lookup(queue_id)
    reason = refuse_reason(store, row, to)
    if reason:
        raise QuarantineError(reason)
    user = user or who()
    recipients = list(to) if to else row.rcpt_to
    previous = _claim(row.id, user, force)
    if previous is not None and previous.state == "done" and not force:
        return Outcome(row.id, "already", recipients, previous=previous)
    try:
        source = store.open_message(row)
    except QuarantineError:
        _unclaim(row.id, previous)
        raise
    client = client_of(row)
    mail_params = row.params.get("mail") or {}
    rcpt_params = row.params.get("rcpt") or {}
    xforward = relayable_xforward(client)
    try:
        with source:
            size = source.seek(0, os.SEEK_END)
            source.seek(0)
            result = relay.send(row.mail_from, recipients, source, size, mail_params=mail_params,
                                rcpt_params=[{} if to else rcpt_params.get(a, {}) for a in recipients],
                                xforward=xforward)
    except BaseException:
        _unclaim(row.id, previous)
        raise
    outcome = Outcome(row.id, "failed", recipients, result, previous)
    ok = result.recipients("ok")
    if ok:
        outcome.status = "released" if len(ok) == len(recipients) else "partial"
    _record(outcome, relay, user, to, force)
    return outcome


def _claim(queue_id, user, force):
    """Claim the message for this release; returns the earlier Release row (or None)."""
    now = time.time()
    with models.writing():
        previous = Release.get_or_none(Release.message == queue_id)
        if previous is not None:
            if previous.state == "sending" and now - previous.time < CLAIM_STALE:
                raise QuarantineError("%s: being released right now by %s (since %s)"
                                      % (queue_id, previous.user, render.when(previous.time)))
            if previous.state == "done" and not force:
                return previous
        # compare and set: two commands (or two nodes) releasing at once cannot both claim it
        if previous is None:
            claimed = Release.insert(message=queue_id, state="sending", time=now,
                                     user=user).on_conflict_ignore().as_rowcount().execute()
        else:
            claimed = (Release.update(state="sending", time=now, user=user)
                       .where(Release.message == queue_id, Release.state == previous.state,
                              Release.time == previous.time).execute())
        if not claimed:
            raise QuarantineError("%s: being released right now by another command" % queue_id)
    return previous


def _unclaim(queue_id, previous):
    """Put the marker back as it was before the claim."""
    with models.writing():
        Release.delete().where(Release.message == queue_id).execute()
        if previous is not None and previous.state == "done":
            previous.save(force_insert=True)


def _record(outcome, relay, user, to, force):
    result, queue_id = outcome.result, outcome.queue_id
    replies = "; ".join("%s: %d %s" % (a, *result.replies.get(a, (0, "no reply"))) for a in outcome.recipients)
    target = ("to %s (instead of the original recipients)" % ", ".join(outcome.recipients) if to
              else "to the original recipients")
    again = ""
    if outcome.previous is not None and outcome.previous.state == "done":
        again = ", forced (released before %s by %s)" % (render.when(outcome.previous.time), outcome.previous.user)
    now = time.time()
    with models.writing():
        exists = Message.select().where(Message.id == queue_id).exists()
        if outcome.status == "failed" or not exists:
            Release.delete().where(Release.message == queue_id).execute()
            if exists and outcome.previous is not None and outcome.previous.state == "done":
                outcome.previous.save(force_insert=True)
            if exists:
                models.log_event(queue_id, "release-failed", "by %s %s via %s: %s"
                                 % (user, target, relay.address, replies), now)
            return
        Release.update(state="done", time=now, user=user, recipients=", ".join(outcome.accepted()),
                       reply=replies, count=Release.count + 1).where(Release.message == queue_id).execute()
        models.log_event(queue_id, "released", "by %s %s via %s%s: %s"
                         % (user, target, relay.address, again, replies), now)


def describe(outcome):
    """(line, is_error) for people."""
    c = render.clean
    queue_id, result = outcome.queue_id, outcome.result
    if outcome.status == "already":
        rel = outcome.previous
        return ("%s: already released %s by %s to %s; use --force to send it again"
                % (queue_id, render.when(rel.time), c(rel.user), c(rel.recipients) or "?"), False)

    def replies(addresses):
        texts = {"%d %s" % result.replies.get(a, (0, "no reply")) for a in addresses}
        if len(texts) == 1:
            return "%s (%s)" % (", ".join(addresses), c(texts.pop()))
        return "; ".join("%s (%d %s)" % (a, *result.replies.get(a, (0, "no reply"))) for a in addresses)
    if outcome.status == "released":
        return "%s: released to %s" % (queue_id, replies(outcome.recipients)), False
    if outcome.status == "partial":
        return ("%s: released to %s; refused: %s" % (queue_id, replies(outcome.accepted()),
                                                     replies(outcome.refused())), True)
    return "%s: release failed, nothing was sent: %s" % (queue_id, replies(outcome.recipients)), True
