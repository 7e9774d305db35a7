"""Statistics over a period: messages by state, verdict and mode, storage, and the cache's savings.

Counts cover messages received since a point in time (default: the last 7 days). "Uploads
saved by the cache" counts the files that needed no upload of their own: every FileCheck
answered from a cached verdict (``cached``), plus every further FileCheck of a content
already analysed in the period (it waited for the first one's analysis). Files vxgate could
not analyse at all ("not analysable") count as neither. Storage is what the spool holds now
for every record, whatever its age.
"""
from peewee import fn

from salmon_app.analysis import FileCheck, Sample
from salmon_app.storage.models import Message, Release
from salmon_app.quarantine import render
from salmon_app.verdict import never_analysed


def stats(store, since=None):
    """A dict of the statistics for messages received at or after ``since`` (None: all)."""
    def period(query, column=Message.created):
        return query.where(column >= since) if since is not None else query

    with store.database.atomic():          # one read snapshot
        groups = {}
        for name, column in (("state", Message.state), ("verdict", Message.verdict), ("mode", Message.mode),
                             ("node", Message.node)):
            rows = period(Message.select(column, fn.COUNT(Message.id), fn.SUM(Message.size))).group_by(column).tuples()
            groups[name] = {key: {"messages": count, "bytes": total or 0}
                            for key, count, total in sorted(rows, key=lambda r: (-r[1], r[0]))}
        messages, received = period(Message.select(fn.COUNT(Message.id), fn.SUM(Message.size))).tuples().get()
        stored, stored_bytes = (Message.select(fn.COUNT(Message.id), fn.SUM(Message.size))
                                .where(Message.has_file == True).tuples().get())  # noqa: E712
        records = Message.select().count()
        released = period(Release.select().where(Release.state == "done"), Release.time).count()
        done = Release.select(Release.message).where(Release.state == "done")
        released_by_state = dict(period(Message.select(Message.state, fn.COUNT(Message.id))
                                        .where(Message.id.in_(done))).group_by(Message.state).tuples())
        in_period = period(Message.select(Message.id))
        checks = list(FileCheck.select(FileCheck.sha256, FileCheck.cached, FileCheck.reason)
                      .where(FileCheck.message.in_(in_period)).tuples())
        uploaded = period(Sample.select().where(Sample.uploaded == True), Sample.created).count()  # noqa: E712
    by_content = {}
    skipped = 0
    for sha256, cached, reason in checks:
        if never_analysed(reason):
            skipped += 1
            continue
        entry = by_content.setdefault(sha256, [0, 0])
        entry[0 if cached else 1] += 1
    from_cache = sum(cached for cached, _ in by_content.values())
    shared = sum(max(0, fresh - 1) for _, fresh in by_content.values())
    return {
        "since": render.iso(since) if since is not None else None,
        "messages": messages or 0, "bytes_received": received or 0,
        "by_state": groups["state"], "by_verdict": groups["verdict"], "by_mode": groups["mode"],
        "by_node": groups["node"],
        "released": released, "released_by_state": released_by_state,
        "stored": {"files": stored or 0, "bytes": stored_bytes or 0, "records": records},
        "files": {"checked": len(checks), "not_analysable": skipped, "distinct": len(by_content),
                  "uploads_saved": from_cache + shared, "cached_verdicts": from_cache,
                  "shared_analyses": shared, "samples_uploaded": uploaded},
    }


def render_stats(data, label=None):
    lines = []
    period = "since %s%s" % (data["since"][:16].replace("T", " "), " (%s)" % label if label else "") \
        if data["since"] else "all records"
    lines.append("Messages received %s: %d (%s)" % (period, data["messages"], render.amount(data["bytes_received"])))
    for title, key in (("By state", "by_state"), ("By verdict", "by_verdict"), ("By mode", "by_mode"),
                       ("By node", "by_node")):
        lines.append("")
        lines.append(title)
        if not data[key]:
            lines.append("  (none)")
            continue
        rows = [[name, str(v["messages"]), render.size(v["bytes"])] for name, v in data[key].items()]
        lines.extend("  " + line for line in render.table([title.split()[1].upper(), "MESSAGES", "SIZE"], rows,
                                                          right=(1, 2)))
    f, s = data["files"], data["stored"]
    lines.append("")
    facts = [
        ("Released", "%d%s" % (data["released"], " (still listed as %s)" % ", ".join(
            "%s %d" % kv for kv in sorted(data["released_by_state"].items())) if data["released_by_state"] else "")),
        ("Files checked", "%d (%d distinct contents, %d not analysable)"
         % (f["checked"], f["distinct"], f["not_analysable"])),
        ("Uploads saved by the cache", "%d (%d cached verdicts, %d waited for a shared analysis)"
         % (f["uploads_saved"], f["cached_verdicts"], f["shared_analyses"])),
        ("Samples uploaded", "%d" % f["samples_uploaded"]),
        ("Stored now", "%d files, %s (%d records in all)" % (s["files"], render.amount(s["bytes"]), s["records"])),
    ]
    size = max(len(k) for k, _ in facts) + 1
    lines.extend("%-*s %s" % (size, k + ":", v) for k, v in facts)
    return lines
