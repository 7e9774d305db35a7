"""The ``vxgate queue`` command: what vxgate owns now, why each message waits, and until when.

Postfix's ``mailq`` for the part of the path that Postfix cannot see: every message vxgate
holds (stored, being checked, waiting for vxCube, being relayed, deferred, parked), with the
reason in words and the time of the next step ("relay deferred: 451 4.3.0 from
127.0.0.1:10026, next try in 2m13s (attempt 4, bounces after 4d)"). ``flush`` asks the daemon
to retry deferred messages now (it reads the schedule from the database within a second, as
``postqueue -f``); ``hold`` parks a message so vxgate leaves it alone, ``release-hold`` lets it
go on from where it was. Everything works beside the running daemon, in short transactions.
"""
import argparse
import json
import sys
import time

from salmon_app.storage import models
from salmon_app.storage.models import Event, FileCheck, Message, Sample
from salmon_app.quarantine import render
from salmon_app.quarantine.store import QuarantineError, who

PROG = "vxgate queue"
_STEP = {models.STORED: "waiting for a check worker", models.CHECKING: "being checked",
         models.RELAYING: "being relayed"}


def owned():
    """The messages vxgate holds now, oldest first."""
    return list(Message.select().where(Message.state.in_(models.OWNED)).order_by(Message.created))


def describe(row, config, now=None):
    """(reason, until): why ``row`` waits, in words, and when its next step is due (epoch or None)."""
    now = now or time.time()
    age = span(now - row.created)
    if row.state == models.PARKED:
        return ("on hold (was %s); vxgate queue release-hold %s" % (row.parked_from or "stored", row.id), None)
    if not row.answered and row.state in models.IN_FLIGHT:
        return ("%s; the sending MTA waits for the reply (%s so far)" % (_STEP.get(row.state, row.state), age), None)
    if row.state == models.ANALYSING:
        return _waiting_for_vxcube(row, config, now)
    if row.state == models.DEFERRED:
        target = config.BccSmtpServer if row.mode == "report" else config.SmtpSenderRelay
        bounce_at = row.created + config.SmtpRelayMaxAge
        return ("relay deferred: %s from %s, next try %s (attempt %d, bounces after %s)"
                % (row.last_reply or "no reply", target, _in(row.next_attempt, now), row.attempts,
                   render.duration(config.SmtpRelayMaxAge)), max(row.next_attempt, now) if bounce_at > now else now)
    if row.state in (models.STORED, models.CHECKING) and row.next_attempt > now:
        last = _last_event(row.id)
        return ("%s; re-check %s (attempt %d)" % (last or "temporary failure", _in(row.next_attempt, now),
                                                  row.attempts), row.next_attempt)
    return (_STEP.get(row.state, row.state), None)


def _waiting_for_vxcube(row, config, now):
    pending = list(FileCheck.select().where(FileCheck.message == row.id, FileCheck.verdict == ""))
    samples = {s.sha256: s for s in Sample.select().where(Sample.sha256.in_([c.sha256 for c in pending]))} if pending else {}
    parts, until = [], None
    for check in pending:
        sample = samples.get(check.sha256)
        name = render.clean(render.fit(check.name or "(no name)", 40))
        if sample is None:
            parts.append("file %s (%s) not yet queued" % (check.sha256[:8], name))
            continue
        begun = sample.started or sample.created
        gives_up = begun + config.VxcubeTimeout
        until = gives_up if until is None else min(until, gives_up)
        if sample.state == "queued":
            text = "upload of sample %s… (%s) waiting %s" % (sample.sha256[:8], name, span(now - sample.created))
        else:
            platforms = ", ".join(_platforms(sample)) or "the suggested platforms"
            text = "sample %s… (%s) on %s, analysis started %s ago" % (
                sample.sha256[:8], name, platforms, span(now - begun))
        parts.append("%s, gives up %s" % (text, _in(gives_up, now)))
    if not parts:
        return ("waiting for vxCube results to be applied", None)
    return ("waiting for vxCube: " + "; ".join(parts), until)


def _platforms(sample):
    try:
        value = json.loads(sample.platforms or "[]")
    except ValueError:
        return []
    return [str(p) for p in value] if isinstance(value, list) else []


def _last_event(queue_id):
    event = Event.select().where(Event.message == queue_id).order_by(Event.time.desc()).first()
    return render.clean(render.fit(event.text, 100)) if event else ""


def _in(when, now):
    return "now" if when <= now else "in " + span(when - now)


def span(seconds):
    """2m13s, 4h5m, 3d2h: two units, as an administrator reads a countdown."""
    seconds = int(max(0, seconds))
    units = [(u, s) for u, s in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)) if seconds >= s] or [("s", 1)]
    (big, size), rest = units[0], seconds % units[0][1]
    text = "%d%s" % (seconds // size, big)
    smaller = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}.get(big)
    if smaller and rest // smaller[1]:
        text += "%d%s" % (rest // smaller[1], smaller[0])
    return text


# ---------------------------------------------------------------- commands
def cmd_list(args, store):
    now = time.time()
    rows = owned()
    entries = []
    for row in rows:
        reason, until = describe(row, store.config, now)
        entries.append((row, reason, until))
    if args.json:
        print(render.dumps({"messages": [{
            "id": row.id, "mode": row.mode, "state": row.state, "age_seconds": round(now - row.created, 1),
            "received": render.iso(row.created), "sender": row.mail_from, "recipients": row.rcpt_to,
            "answered": bool(row.answered), "reason": reason, "attempts": row.attempts, "node": row.node,
            "next_step": render.iso(until) if until else None} for row, reason, until in entries],
            "total": len(entries), "by_state": _counts(rows),
            "oldest_seconds": round(now - rows[0].created, 1) if rows else None}))
        return
    if not entries:
        print("vxgate holds no message")
        return
    several = models.shared() or len({row.node for row in rows}) > 1
    for row, reason, _ in entries:
        recipients = row.rcpt_to
        print("%-16s  %6s  %-6s  %-9s  %s%s -> %s%s" % (
            row.id, span(now - row.created), row.mode, row.state,
            "on %s  " % render.clean(row.node) if several else "",
            render.clean(render.fit(render.sender(row.mail_from), 40)),
            render.clean(render.fit(", ".join(recipients[:3]), 60)),
            " +%d" % (len(recipients) - 3) if len(recipients) > 3 else ""))
        print("    (%s)" % reason)
    counts = ", ".join("%d %s" % (n, state) for state, n in _counts(rows).items())
    print("-- %d message%s: %s; oldest %s" % (len(rows), "" if len(rows) == 1 else "s", counts,
                                            span(now - rows[0].created)))


def _counts(rows):
    counts = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


def cmd_flush(args, store):
    query = Message.update(next_attempt=0).where(
        Message.state.in_((models.DEFERRED, models.STORED, models.CHECKING)), Message.answered == True)  # noqa: E712
    if args.ids:
        _known(store, args.ids)
        query = query.where(Message.id.in_(args.ids))
    with models.writing():
        count = query.execute()
        if args.ids:     # a flushed analysis is polled again at once too
            checks = [c.sha256 for c in _file_checks(args.ids)]
            if checks:
                Sample.update(next_step=0).where(Sample.sha256.in_(checks)).execute()
    print("%d message%s scheduled for a retry now (the daemon picks them up within a second)"
          % (count, "" if count == 1 else "s"))


def _file_checks(ids):
    return FileCheck.select(FileCheck.sha256).where(FileCheck.message.in_(ids), FileCheck.verdict == "")


def _known(store, ids):
    for queue_id in ids:
        store.lookup(queue_id)


def cmd_hold(args, store):
    failed = False
    for queue_id in args.ids:
        row = store.lookup(queue_id)
        with models.writing():
            changed = Message.update(parked_from=Message.state, state=models.PARKED, updated=time.time()).where(
                Message.id == row.id, Message.state.in_(models.IN_FLIGHT), Message.answered == True).execute()  # noqa: E712
            if changed:
                models.log_event(row.id, models.PARKED, "put on hold by %s (was %s)" % (who(), row.state))
        if changed:
            print("%s: on hold (was %s); vxgate queue release-hold %s lets it go on" % (row.id, row.state, row.id))
            continue
        failed = True
        fresh = store.lookup(queue_id)
        if fresh.state == models.PARKED:
            print("%s: already on hold" % row.id, file=sys.stderr)
        elif fresh.state in models.IN_FLIGHT:
            print("%s: the sending MTA still waits for its reply; hold it there (postsuper -h)" % row.id, file=sys.stderr)
        else:
            print("%s: finished (state %s), not in the queue; see vxgate quarantine show %s"
                  % (row.id, fresh.state, row.id), file=sys.stderr)
    if failed:
        raise QuarantineError("some messages were not put on hold", status=1) from None


def cmd_release_hold(args, store):
    failed = False
    for queue_id in args.ids:
        row = store.lookup(queue_id)
        back = row.parked_from or models.STORED
        with models.writing():
            changed = Message.update(state=back, parked_from="", next_attempt=0, updated=time.time()).where(
                Message.id == row.id, Message.state == models.PARKED).execute()
            if changed:
                models.log_event(row.id, "unparked", "released from hold by %s (back to %s)" % (who(), back))
        if changed:
            print("%s: released from hold, back to %s" % (row.id, back))
        else:
            failed = True
            print("%s: not on hold (state %s)" % (row.id, row.state), file=sys.stderr)
    if failed:
        raise QuarantineError("some messages were not on hold", status=1) from None


def register(subparsers, runner, id_arg):
    """``vxgate queue`` with its sub-commands; ``runner`` opens the store and reports errors."""
    parser = subparsers.add_parser("queue", help="what vxgate holds now and why each message waits (like mailq)",
                                   description="Every message vxgate owns now: why it waits and until when. "
                                               "Works while the daemon runs.")
    parser.add_argument("-c", "--config", help="configuration file (default: $VXGATE_CONFIG or config/vxgate.ini)")
    parser.add_argument("--json", action="store_true", help="one JSON document for scripts")
    parser.set_defaults(func=runner(cmd_list, PROG), ids=[])
    sub = parser.add_subparsers(dest="queue_command", metavar="COMMAND")
    for name, func, text in (("flush", cmd_flush, "retry deferred messages now (all, or the ids given)"),
                             ("hold", cmd_hold, "park messages: vxgate leaves them alone until release-hold"),
                             ("release-hold", cmd_release_hold, "let parked messages go on from where they were")):
        child = sub.add_parser(name, help=text, description=text)
        child.add_argument("-c", "--config", default=argparse.SUPPRESS,
                           help="configuration file (default: $VXGATE_CONFIG or config/vxgate.ini)")
        child.add_argument("ids", nargs="*" if name == "flush" else "+", type=id_arg, metavar="ID")
        child.set_defaults(func=runner(func, PROG))
    return parser
