"""Expiry: ``purge`` by age on request, and ``expire()``, the daemon's automatic retention.

``purge`` removes finished messages received before a point in time (``--older-than 30d``),
optionally only in some states. ``expire(config)`` applies the configured retention per
state: ``DeliveredRetention`` to delivered, discarded, dropped and tempfailed records (and
BCC copies closed with nothing to report) and ``QuarantineRetention`` to every other final
state (quarantined, rejected, failed, held, and BCC copies that were reported), counted from
the moment the message reached that state (its last update). Both remove records and files
together through ``remove.remove_messages`` in short batches, and neither ever touches a
message in flight: the state is checked again inside each delete transaction. The daemon
calls ``expiry_hook(config)`` from its sweeper: it runs ``expire()`` at start and then once
an hour. With a shared database one node at a time expires (an advisory lock), and each node
then removes the files of its spool whose records another node removed.
"""
import logging
import os
import time

from salmon_app.storage import models
from salmon_app.storage.models import Message
from salmon_app.quarantine.remove import remove_files, remove_messages
from salmon_app.quarantine.store import Store
from salmon_app.storage.recovery import unrecorded

LOG = logging.getLogger("vxgate.quarantine")
DELIVERED_STATES = (models.DELIVERED, models.DISCARDED, models.DROPPED, models.TEMPFAILED,
                    getattr(models, "CLOSED", "closed"))
# every other final state: nothing final may stay forever because it was forgotten here
QUARANTINE_STATES = tuple(s for s in models.FINAL if s not in DELIVERED_STATES)
SCAN = 5000        # ids selected per round; removal itself goes in batches of remove.BATCH


def purge_candidates(before, states=None):
    """Query of finished messages received before ``before`` (epoch seconds)."""
    states = [s for s in (states or models.FINAL) if s not in models.OWNED]
    return (Message.select(Message.id, Message.state, Message.size, Message.has_file)
            .where(Message.created < before, Message.state.in_(states)).order_by(Message.created))


def purge(store, before, states=None, dry_run=False):
    """Remove (or with dry_run only count) what ``purge_candidates`` selects; returns a summary dict."""
    summary = {"messages": 0, "files": 0, "bytes": 0, "by_state": {}}
    if dry_run:
        for row in purge_candidates(before, states):
            summary["messages"] += 1
            summary["by_state"][row.state] = summary["by_state"].get(row.state, 0) + 1
            if row.has_file and os.path.exists(store.file_path(row.id)):
                summary["files"] += 1
                summary["bytes"] += row.size
        return summary
    while True:
        ids = [r.id for r in purge_candidates(before, states).limit(SCAN)]
        if not ids:
            return summary
        removed, _ = remove_messages(store, ids)
        _count(summary, removed)
        if not removed:
            return summary      # only messages that changed under us: nothing more to do now


def expire(config, now=None, *, store=None):
    """Apply DeliveredRetention / QuarantineRetention; returns counts.

    ``{"messages": n, "files": n, "bytes": n, "by_state": {state: n}}``. Never removes a
    message in flight. Safe to call from the daemon (it reuses the open database)."""
    now = time.time() if now is None else now
    store = store or Store(config, must_exist=False)
    summary = {"messages": 0, "files": 0, "bytes": 0, "by_state": {}}
    with models.exclusive("vxgate expiry") as mine:
        if mine:      # with a shared database, one node at a time
            _expire(store, config, now, summary)
    summary["orphans"] = remove_orphans(store, now)
    if summary["messages"]:
        LOG.info("expiry: removed %d messages (%s), %d files, %d bytes", summary["messages"],
                 ", ".join("%s %d" % kv for kv in sorted(summary["by_state"].items())),
                 summary["files"], summary["bytes"])
    return summary


def remove_orphans(store, now, age=3600.0):
    """Remove this node's spool files whose record is gone (another node expired or deleted it)
    once they are ``age`` old: a file younger than that may be one being received right now."""
    if not models.shared():
        return 0     # one node removes its files with their records
    count = 0
    for queue_id in unrecorded(store.spool, store.node):
        try:
            if now - os.path.getmtime(store.file_path(queue_id)) >= age and not Message.get_or_none(Message.id == queue_id):
                count += remove_files(store, queue_id)
        except (OSError, ValueError):
            pass
    return count


def _expire(store, config, now, summary):
    for states, retention in ((DELIVERED_STATES, config.DeliveredRetention),
                              (QUARANTINE_STATES, config.QuarantineRetention)):
        if retention is None:
            continue
        cutoff = now - retention
        while True:
            # updated >= created, so the indexed created < cutoff only narrows the scan
            ids = [r.id for r in Message.select(Message.id)
                   .where(Message.created < cutoff, Message.updated < cutoff, Message.state.in_(states))
                   .order_by(Message.created).limit(SCAN)]
            if not ids:
                break
            removed, _ = remove_messages(store, ids)
            _count(summary, removed)
            if not removed:
                break


def _count(summary, removed):
    for item in removed:
        summary["messages"] += 1
        summary["by_state"][item.state] = summary["by_state"].get(item.state, 0) + 1
        if item.files:
            summary["files"] += 1
            summary["bytes"] += item.size


def expiry_hook(config, interval=3600.0, clock=time.monotonic, metrics=None):
    """A sweeper hook that runs ``expire(config)`` now and then every ``interval`` seconds;
    ``config`` may be a callable returning the configuration in force (it can be reloaded)."""
    state = {"due": clock()}

    def hook():
        if clock() < state["due"]:
            return
        state["due"] = clock() + interval
        try:
            summary = expire(config() if callable(config) else config)
            if metrics is not None:
                metrics.expiry_runs.inc()
                metrics.expired.inc(summary["messages"])
        except Exception:
            LOG.exception("expiry failed; trying again in %ds", interval)
    return hook
