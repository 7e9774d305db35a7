"""Carrying out the policy's decision: the SMTP reply while Postfix waits, or vxgate's own action.

While the session waits, each action maps to its reply: accept relays (then the next hop's
reply is given), reject 550, tempfail 451, replycode its code, discard 250, quarantine 250.
Once the session was answered (a long analysis), vxgate owns the message and must never bounce
malware to its (forged) sender: reject and discard become quarantine plus a notice to the
administrator, tempfail checks again later (until SmtpRelayMaxAge, then quarantine).
Modifications are applied on accept and kept in ``<id>.out`` beside the original, which stays
byte-identical for release and export.
"""
import json
import time

from salmon_app.storage import models
from salmon_app.storage.models import Message, Recipient
from salmon_app.policy import apply_modifications
from salmon_app.receiver import Reply


def apply(gateway, message, decision, analysis):
    # without a hook or an analysis there is nothing to record: the pass-through path saves a commit
    fields = {"action": decision.action, "reason": decision.reason or decision.message or ""} \
        if gateway.config.SmtpHook else {}
    if analysis:
        fields.update(verdict=analysis["verdict"], analysis_json=json.dumps(analysis))
    action, queue_id = decision.action, message.queue_id
    why = "hook: %s%s" % (action, " (%s)" % fields["reason"] if fields.get("reason") else "")
    if action == "accept":
        return accept(gateway, message, decision, fields)
    if action == "quarantine":
        told = gateway.conclude(queue_id, models.QUARANTINED,
                                Reply(250, "2.0.0 Ok: queued as %s (held in quarantine)" % queue_id), why, **fields)
        if not told:         # nobody heard the 250: the administrator is the one to know
            gateway.notify_admin(message.row, "quarantined by the hook after the message was accepted",
                                 fields.get("reason", ""), fields)
        return told
    if action == "tempfail" or (action == "replycode" and str(decision.code).startswith("4")):
        reply = Reply(int(decision.code or 451), decision.text or _enhanced("4.7.1", decision.message or "Try again later"))
        if gateway.conclude(queue_id, models.TEMPFAILED, reply, why, remove_file=True, require_session=True, **fields):
            return True
        return retry_later(gateway, message, why, fields)
    if action in ("reject", "replycode"):
        reply = Reply(int(decision.code or 550), decision.text or _enhanced("5.7.1", decision.message or "Message rejected"))
        if gateway.conclude(queue_id, models.REJECTED, reply, why, require_session=True, **fields):
            return True
    elif action == "discard":
        if gateway.conclude(queue_id, models.DISCARDED, Reply(250, "2.0.0 Ok: discarded as %s" % queue_id),
                            why, require_session=True, **fields):
            return True
    else:
        raise ValueError("unknown action %r" % action)
    # the session was already answered: keep the message, tell the administrator
    gateway.conclude(queue_id, models.QUARANTINED, None, why + "; answered already, so quarantined", **fields)
    gateway.notify_admin(message.row, "%s after the message was accepted: quarantined" % action,
                         fields.get("reason", ""), fields)
    return False


def accept(gateway, message, decision, fields):
    queue_id = message.queue_id
    recipients_changed = decision.added_recipients or decision.deleted_recipients
    if recipients_changed:
        change_recipients(message, decision.added_recipients, decision.deleted_recipients)
        if not Recipient.select().where(Recipient.message == queue_id, Recipient.state == "pending").exists():
            return gateway.conclude(queue_id, models.DISCARDED, Reply(250, "2.0.0 Ok: no recipients left"),
                                    "hook removed every recipient", **fields)
    if decision.modifications:
        data = apply_modifications(message.data(), decision, password=gateway.repack_password, queue_id=queue_id)
        gateway.spool.store_variant(queue_id, "out", data)
        message.variant = True    # relay() sends this copy, not the original
        message.log.info("modified: %s", ", ".join(_describe(m) for m in decision.modifications))
    message.forward(models.RELAYING, **fields)
    return True


def change_recipients(message, added, deleted):
    queue_id = message.queue_id
    deleted_lower = {a.lower() for a in deleted}
    rcpts = [a for a in message.row.rcpt_to if a.lower() not in deleted_lower]
    rcpts += [a for a in added if a not in rcpts]
    with models.writing():
        Recipient.update(state="removed", reply="removed by the hook").where(
            Recipient.message == queue_id, Recipient.state == "pending",
            Recipient.address.in_(list(deleted))).execute()
        for address in added:
            Recipient.create(message=queue_id, address=address)
        Message.update(rcpt_json=json.dumps(rcpts), updated=time.time()).where(Message.id == queue_id).execute()
        models.log_event(queue_id, "recipients", "added %s; removed %s" % (", ".join(added) or "-", ", ".join(deleted) or "-"))
    message.row.rcpt_json = json.dumps(rcpts)
    message.recipients = None      # re-read: the record now says who is left


def retry_later(gateway, message, why, fields):
    """A temporary failure of a message vxgate owns: check it again later, quarantine when too old."""
    row = message.row
    if time.time() - row.created > gateway.config.SmtpRelayMaxAge:
        gateway.conclude(row.id, models.QUARANTINED, None, why + "; too old to retry, quarantined", **fields)
        gateway.notify_admin(row, "temporary failures until the maximum age: quarantined", fields.get("reason", ""),
                             fields)
        return False
    attempts = row.attempts + 1
    delay = gateway.retry_delay(attempts)
    models.set_state(row.id, models.STORED, "%s; checking again in %.1fs" % (why, delay), attempts=attempts,
                     next_attempt=time.time() + delay, **fields)
    return False


def _enhanced(code, text):
    return text if text[:1].isdigit() and text.count(".") >= 2 else "%s %s" % (code, text)


def _describe(op):
    if isinstance(op, dict):
        return "%s(%s)" % (op.get("op") or op.get("kind") or "change", op.get("name") or op.get("path") or "")
    return str(op)
