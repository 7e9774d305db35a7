"""Filters and listing: which messages a command is about, and the ``list`` output.

``Filters`` holds what the user asked for (states, verdicts, modes, sender, recipient and
subject substrings, a time window) and turns it into a peewee query on ``Message``; ``list``,
``release --all-matching`` and ``purge`` share it. Times are given as durations back from now
(``2h``, ``3d``, ``1h30m``), as ``today``/``yesterday``, or as ISO dates (``2026-01-31``,
``2026-01-31T14:00``, local time unless an offset is given; a bare date is its midnight, as in
journalctl). Sorting follows ``ls``: newest first by time, largest first by size, A to Z by
state or sender; ``--reverse`` flips it.
"""
import dataclasses
import datetime

from salmon_app.storage import models
from salmon_app.config import parse_duration
from salmon_app.storage.models import Message, Recipient
from salmon_app.quarantine import render
from salmon_app.verdict import Verdict

STATES = models.OWNED + models.FINAL
STATE_GROUPS = {"in-flight": models.OWNED, "final": models.FINAL}
MODES = ("smtp", "bcc", "notice", "report")
VERDICTS = tuple(v.label for v in Verdict)
SORT_KEYS = ("created", "size", "state", "sender")


def parse_when(text, now=None):
    """A point in time (epoch seconds) from ``2h``/``3d`` ago, today, yesterday or an ISO date."""
    text = str(text).strip()
    now = now if now is not None else datetime.datetime.now().timestamp()
    lowered = text.lower()
    if lowered in ("now",):
        return now
    if lowered in ("today", "yesterday"):
        day = datetime.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        if lowered == "yesterday":
            day -= datetime.timedelta(days=1)
        return day.timestamp()
    try:
        return now - parse_duration(lowered)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("bad time %r: expected a duration back from now (30m, 2h, 3d, 1w), "
                         "today, yesterday or a date (2026-01-31, 2026-01-31T14:00)" % text) from None
    return moment.timestamp()


def split_choices(values, known, groups=None, what="value"):
    """Repeated and comma-separated option values, checked against ``known`` (ValueError)."""
    chosen = []
    for value in values or ():
        for item in str(value).split(","):
            item = item.strip().lower()
            if not item:
                continue
            if groups and item in groups:
                chosen.extend(groups[item])
            elif item in known:
                chosen.append(item)
            else:
                extra = (", " + ", ".join(groups)) if groups else ""
                raise ValueError("unknown %s %r (expected one of %s%s)" % (what, item, ", ".join(known), extra))
    return list(dict.fromkeys(chosen))


@dataclasses.dataclass
class Filters:
    states: list = dataclasses.field(default_factory=list)
    verdicts: list = dataclasses.field(default_factory=list)
    modes: list = dataclasses.field(default_factory=list)
    sender: str = None
    recipient: str = None
    subject: str = None
    since: float = None
    until: float = None
    released: bool = None      # True: released ones only, False: never released, None: both
    message_id: str = None     # Message-ID contains
    queue_id: str = None       # queue id starts with (any case)

    def given(self):
        """True when at least one filter narrows the selection."""
        return any([self.states, self.verdicts, self.modes, self.sender is not None,
                    self.recipient is not None, self.subject is not None,
                    self.since is not None, self.until is not None, self.released is not None,
                    self.message_id is not None, self.queue_id is not None])

    def conditions(self):
        where = []
        if self.states:
            where.append(Message.state.in_(self.states))
        if self.verdicts:
            where.append(Message.verdict.in_(self.verdicts))
        if self.modes:
            where.append(Message.mode.in_(self.modes))
        if self.sender is not None:
            if self.sender in ("<>", ""):
                where.append(Message.mail_from == "")
            else:
                where.append(Message.mail_from.contains(self.sender.strip("<>")))
        if self.recipient is not None:
            needle = self.recipient.strip("<>")
            where.append(Message.id.in_(Recipient.select(Recipient.message)
                                        .where(Recipient.address.contains(needle))))
        if self.subject is not None:
            where.append(Message.subject.contains(self.subject))
        if self.message_id is not None:
            where.append(Message.message_id.contains(self.message_id.strip()))
        if self.queue_id is not None:
            where.append(Message.id.startswith(self.queue_id.strip().upper()))
        if self.since is not None:
            where.append(Message.created >= self.since)
        if self.until is not None:
            where.append(Message.created < self.until)
        if self.released is not None:
            from salmon_app.storage.models import Release
            done = Release.select(Release.message).where(Release.state == "done")
            where.append(Message.id.in_(done) if self.released else Message.id.not_in(done))
        return where

    def select(self, *fields):
        query = Message.select(*fields)
        where = self.conditions()
        return query.where(*where) if where else query


def filters_from(args, now=None):
    """Filters from parsed arguments (argparse already checked the values)."""
    return Filters(states=args.state or [], verdicts=args.verdict or [], modes=args.mode or [],
                   sender=args.sender, recipient=args.recipient, subject=args.subject,
                   since=args.since, until=args.until, released=getattr(args, "released", None),
                   message_id=getattr(args, "message_id", None))


def ordered(query, sort="created", reverse=False):
    natural = {"created": Message.created.desc(), "size": Message.size.desc(),
               "state": Message.state.asc(), "sender": Message.mail_from.asc()}
    flipped = {"created": Message.created.asc(), "size": Message.size.asc(),
               "state": Message.state.desc(), "sender": Message.mail_from.desc()}
    key = (flipped if reverse else natural)[sort]
    tie = Message.created.asc() if reverse else Message.created.desc()
    return query.order_by(key, tie, Message.id)


def summary(row, release=None):
    """The JSON form of a message in a listing."""
    recipients = row.rcpt_to
    return {
        "id": row.id, "created": render.iso(row.created), "created_epoch": round(row.created, 3),
        "updated": render.iso(row.updated), "state": row.state, "mode": row.mode,
        "verdict": row.verdict, "action": row.action, "reason": row.reason, "size": row.size,
        "sender": row.mail_from, "recipients": recipients, "subject": row.subject,
        "header_from": row.header_from, "message_id": row.message_id, "has_file": bool(row.has_file),
        "answered": bool(row.answered), "parent": row.parent, "node": row.node,
        "released": release_dict(release),
    }


def release_dict(release):
    if release is None:
        return None
    return {"time": render.iso(release.time), "user": release.user, "recipients": release.recipients,
            "reply": release.reply, "count": release.count}


def listing(store, filters, sort="created", reverse=False, limit=None, offset=0):
    """(rows, total, releases) for the filters; rows are at most ``limit`` long, from ``offset`` on
    (the web console's pages: LIMIT/OFFSET on the indexed sort column)."""
    base = filters.select()
    total = base.count()
    query = ordered(filters.select(), sort, reverse)
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    rows = list(query)
    return rows, total, store.released(r.id for r in rows)


def render_list(rows, total, releases, width=None):
    """The lines of the human listing, ending with the total line."""
    if not rows:
        return ["0 messages" if total == 0 else "0 of %d messages" % total]
    header = ["ID", "TIME", "STATE", "VERDICT", "SIZE", "SENDER", "RECIPIENTS", "SUBJECT"]
    # the node holding each file matters once several nodes share the database
    nodes = models.shared() or len({row.node for row in rows}) > 1
    if nodes:
        header.insert(1, "NODE")
    cells = []
    for row in rows:
        recipients = row.rcpt_to
        first = render.clean(recipients[0]) if recipients else "-"
        more = " +%d" % (len(recipients) - 1) if len(recipients) > 1 else ""
        state = row.state + ("*" if row.id in releases else "")
        cells.append([row.id, render.when(row.created, seconds=False), state, row.verdict,
                      render.size(row.size), render.fit(render.clean(render.sender(row.mail_from)), 32),
                      render.fit(first, 32 - len(more)) + more, render.clean(row.subject) or "-"])
        if nodes:
            cells[-1].insert(1, render.fit(render.clean(row.node) or "-", 24))
    used = sum(max(render.width(h), max(render.width(c[i]) for c in cells)) + 2
               for i, h in enumerate(header[:-1]))
    room = max(20, (width or (used + 60)) - used)
    for c in cells:
        c[-1] = render.fit(c[-1], room)
    lines = render.table(header, cells, right=(5,) if nodes else (4,))
    count = "%d messages" % total if len(rows) == total else "%d of %d messages" % (len(rows), total)
    if total == 1 and len(rows) == 1:
        count = "1 message"
    if releases:
        count += " (* released)"
    lines.append(count)
    return lines


def render_json(rows, total, releases):
    return render.dumps({"total": total, "count": len(rows),
                         "messages": [summary(r, releases.get(r.id)) for r in rows]})

