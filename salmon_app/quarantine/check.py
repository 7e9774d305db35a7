"""Consistency check (and repair) of the quarantine: records against files, rows against records.

Finds records whose file should be there (``has_file``) but is not, files in the spool that
no record owns (``.eml`` originals and ``.out`` modified copies), files kept although their
record says they were removed, and Recipient/Event/FileCheck/Release rows left without their
message. The spool is listed before the database is read and every finding is checked again
before it is reported, so a message being received right now is never taken for a problem.
``repair`` marks missing files in the record (``has_file = No``, with an Event), corrects the
opposite case, deletes rows without a message, and removes orphan files older than a minute
(``MIN_AGE``; younger ones may be a reception between its fsync and its commit), but none
while a daemon keeps records in memory because its storage fails (``storage/keptlock.py``).
Messages in flight are only reported: they belong to the daemon. With a shared database a
node checks its own records against its own spool, and those of its processes
(``Processes``: their nodes ``NodeName/k`` against ``SpoolDir/proc-k``).
"""
import dataclasses
import os
import time

from salmon_app.storage import models, subnodes
from salmon_app.storage.keptlock import unless_kept
from salmon_app.analysis import FileCheck
from salmon_app.storage.models import Body, Event, Message, Recipient, Release, ReleaseRequest
from salmon_app.quarantine import render
from salmon_app.quarantine.store import QUEUE_ID_RE, who

MIN_AGE = 60.0


@dataclasses.dataclass
class Finding:
    kind: str           # missing-file, orphan-file, unrecorded-file, orphan-rows
    subject: str        # queue id, path or table
    detail: str
    repaired: bool = False
    action: str = ""    # what repair did or why it did not


def spool_files(spool):
    """{queue id: [paths]} of every .eml and .out file in the spool and its processes' spools
    (tmp/ and samples/ excluded)."""
    found = {}
    for directory in [spool.directory] + list(subnodes.process_dirs(spool.directory, 1).values()):
        _folder_files(directory, found)
    return found


def _folder_files(directory, found):
    try:
        folders = os.listdir(directory)
    except FileNotFoundError:
        return found
    for sub in folders:
        folder = os.path.join(directory, sub)
        if len(sub) != 2 or not os.path.isdir(folder):      # tmp, samples, proc-N
            continue
        for name in os.listdir(folder):
            stem, dot, ext = name.rpartition(".")
            if dot and ext in ("eml", "out") and QUEUE_ID_RE.match(stem):
                found.setdefault(stem, []).append(os.path.join(folder, name))
    return found


def check(store, repair=False, now=None, min_age=MIN_AGE):
    """Returns (findings, counts) after checking (and repairing when asked)."""
    spool = store.spool
    files = spool_files(spool)                       # first the files, then the records
    # only this node's records: another node's files are in its own spool
    records = dict(Message.select(Message.id, Message.has_file)
                   .where(subnodes.family(Message.node, store.node) | (Message.node == "")).tuples())
    findings = []
    user = who()

    for queue_id, has_file in records.items():
        present = queue_id in files and any(p.endswith(".eml") for p in files[queue_id])
        if has_file and not present:
            findings.append(_missing(store, queue_id, repair, user))
        elif not has_file and present:
            findings.append(_unrecorded(store, queue_id, repair, user))

    for queue_id, paths in sorted(files.items()):
        if queue_id in records:
            continue
        for path in sorted(paths):
            findings.append(_orphan(path, queue_id, repair, now, min_age))
    findings = [f for f in findings if f is not None]

    for model in (Recipient, Event, FileCheck, Release, ReleaseRequest, Body):
        finding = _orphan_rows(model, repair)
        if finding:
            findings.append(finding)
    counts = {"records": len(records), "files": sum(len(p) for p in files.values()),
              "problems": len(findings), "repaired": sum(1 for f in findings if f.repaired)}
    return findings, counts


def _missing(store, queue_id, repair, user):
    fresh = Message.get_or_none(Message.id == queue_id)
    if fresh is None or not fresh.has_file or os.path.exists(store.file_path(queue_id)):
        return None                                   # changed meanwhile: not a problem
    finding = Finding("missing-file", fresh.id, "%s: record says its file is kept, but %s is missing"
                      % (fresh.state, store.file_path(fresh.id)))
    if not repair:
        return finding
    if fresh.state in models.OWNED:
        finding.action = "not repaired: in flight (the daemon handles it)"
        return finding
    with models.writing():
        changed = Message.update(has_file=False).where(Message.id == fresh.id, Message.has_file == True).execute()  # noqa: E712
        if changed:
            models.log_event(fresh.id, "repair", "file missing from the spool; recorded as removed "
                             "(vxgate quarantine check --repair by %s)" % user)
    finding.repaired, finding.action = True, "recorded as without file"
    return finding


def _unrecorded(store, queue_id, repair, user):
    fresh = Message.get_or_none(Message.id == queue_id)
    if fresh is None or fresh.has_file or not os.path.exists(store.file_path(queue_id)):
        return None
    finding = Finding("unrecorded-file", fresh.id, "%s: record says its file was removed, but %s is there"
                      % (fresh.state, store.file_path(fresh.id)))
    if repair:
        with models.writing():
            Message.update(has_file=True).where(Message.id == fresh.id).execute()
            models.log_event(fresh.id, "repair", "file found in the spool; recorded as kept "
                             "(vxgate quarantine check --repair by %s)" % user)
        finding.repaired, finding.action = True, "recorded as kept"
    return finding


def _orphan(path, queue_id, repair, now, min_age):
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    if Message.select().where(Message.id == queue_id).exists():
        return None                                   # its record arrived meanwhile
    age = (now if now is not None else time.time()) - stat.st_mtime
    finding = Finding("orphan-file", path, "no record; %s, %s old" % (render.size(stat.st_size), render.duration(age)))
    if not repair:
        return finding
    if age < min_age:
        finding.action = "not removed: younger than %ds (it may be arriving right now)" % min_age
        return finding
    with unless_kept(os.path.dirname(os.path.dirname(path))) as free:
        if not free:
            finding.action = ("not removed: vxgate keeps records in memory while its storage fails, and this "
                              "file's may be one; repair again once its log says \"storage works again\"")
            return finding
        if Message.select().where(Message.id == queue_id).exists():
            return None                               # written from memory just now
        try:
            os.unlink(path)
            finding.repaired, finding.action = True, "removed"
        except FileNotFoundError:
            finding.repaired, finding.action = True, "already gone"
        except OSError as exc:
            finding.action = "not removed: %s" % (exc.strerror or exc)
    return finding


def _orphan_rows(model, repair):
    table = model._meta.table_name
    orphans = model.select().where(model.message.not_in(Message.select(Message.id)))
    count = orphans.count()
    if not count:
        return None
    finding = Finding("orphan-rows", table, "%d %s row(s) without their message" % (count, table))
    if repair:
        with models.writing():
            deleted = model.delete().where(model.message.not_in(Message.select(Message.id))).execute()
        finding.repaired, finding.action = True, "deleted %d" % deleted
    return finding


def render_check(findings, counts, repair):
    lines = []
    titles = {"missing-file": "Records whose file is missing", "unrecorded-file": "Files kept against their record",
              "orphan-file": "Files without a record", "orphan-rows": "Rows without their message"}
    for kind, title in titles.items():
        items = [f for f in findings if f.kind == kind]
        if not items:
            continue
        lines.append("%s: %d" % (title, len(items)))
        for f in items:
            suffix = "  -> " + f.action if f.action else ""
            if kind == "orphan-rows":
                lines.append("  %s%s" % (f.detail, suffix))
            else:
                lines.append("  %s  %s%s" % (f.subject, render.clean(f.detail), suffix))
    if not findings:
        lines.append("check: OK (%d records, %d files)" % (counts["records"], counts["files"]))
    elif repair:
        left = counts["problems"] - counts["repaired"]
        lines.append("check: %d problem(s), %d repaired%s" % (counts["problems"], counts["repaired"],
                                                               ", %d left" % left if left else ""))
    else:
        lines.append("check: %d problem(s) (%d records, %d files); run with --repair to fix them"
                     % (counts["problems"], counts["records"], counts["files"]))
    return lines
