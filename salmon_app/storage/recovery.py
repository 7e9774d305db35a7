"""Crash recovery at start-up and the sweeper that keeps every owned message moving.

At start-up: files never acknowledged (``tmp/``, or with no record) are removed; records
whose 250 was never sent are dropped, since Postfix still holds those messages; every
acknowledged message in flight is resumed, and one that was in flight at too many start-ups
(SmtpRecoveryLimit) is set aside as ``held`` so a poisonous message cannot crash-loop vxgate.
While running, the sweeper re-submits what no stage holds: deferred mail whose time has come
and anything a full queue could not take. Everything here touches only this node's messages
(``NodeName``); with a shared database the sweeper also resumes, every second, this node's
messages whose analyses another node finished.
"""
import logging
import threading
import time

from peewee import fn

from salmon_app.log import qlog
from salmon_app.storage import models, subnodes
from salmon_app.storage.models import FileCheck, Message

LOG = logging.getLogger("vxgate.recovery")


def recover(gateway):
    spool, limit, node = gateway.spool, gateway.config.SmtpRecoveryLimit, gateway.node
    if not gateway.sockets:     # one process now (Processes = 1): it takes over the others' mail
        subnodes.adopt(gateway.config, 1)
    removed = spool.clean_tmp()
    if not models.postgres() and not subnodes.is_subnode(node):   # records from before NodeName: process 0's
        with models.writing():
            Message.update(node=node).where(Message.node == "").execute()
    models.heartbeat(node, started=True)
    orphans = unrecorded(spool, node)
    for queue_id in orphans:
        spool.remove(queue_id)
    dropped = resumed = held = 0
    # another node's messages are its own: it resumes them when it starts again
    # read in full first: a write on this connection while its SELECT is open fails at once on
    # SQLite when another process committed meanwhile (a stale read cannot become a write)
    for row in list(Message.select().where(Message.state.in_(models.IN_FLIGHT), Message.node == node)):
        log = qlog(row.id, LOG)
        if not row.answered:
            gateway.conclude(row.id, models.DROPPED, None,
                             "vxgate stopped before answering; the sending MTA still holds the message",
                             remove_file=True)
            dropped += 1
        elif row.recoveries + 1 >= limit:
            gateway.conclude(row.id, models.HELD, None,
                             "in flight at %d start-ups; set aside (vxgate quarantine show/release)" % (row.recoveries + 1),
                             recoveries=row.recoveries + 1)
            log.error("set aside after %d start-ups in flight", row.recoveries + 1)
            held += 1
        else:
            with models.writing():
                Message.update(recoveries=row.recoveries + 1).where(Message.id == row.id).execute()
                models.log_event(row.id, "resumed", "resumed at start-up in state %s" % row.state)
            resumed += 1
    LOG.info("recovery: %d unacknowledged files removed, %d dropped, %d resumed, %d set aside",
             removed + len(orphans), dropped, resumed, held)
    return {"removed": removed + len(orphans), "dropped": dropped, "resumed": resumed, "held": held}


def unrecorded(spool, node):
    """Queue ids of ``spool``'s message files that have no record of ``node`` (or of one of its
    processes' nodes: ``subnodes.adopt`` moves files before their records)."""
    known = {row.id for row in Message.select(Message.id).where(subnodes.family(Message.node, node))}
    return [qid for qid in spool.queue_ids() if qid not in known and not qid.endswith(".out")]


class Sweeper:
    """Once a second, hands the stages what is due and not already held."""

    def __init__(self, gateway, interval=1.0):
        self.gateway, self.interval = gateway, interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        self.hooks = []    # callables run each round (expiry, analysis resumption)
        self.rounds = -1

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.thread.join(10)

    def _run(self):
        while not self.stopping.wait(self.interval):
            try:
                if not self.gateway.storage.retry():
                    continue       # nothing moves while records cannot be written
                if self.rounds % 10 == 0:
                    models.heartbeat(self.gateway.node)
                    self.gateway.node_claim.keep()
                self.sweep()
                for hook in self.hooks:
                    hook()
            except Exception:
                LOG.exception("sweeper round failed; trying again")

    def sweep(self):
        # Messages waiting for vxCube are resumed by the analyser; look at them only now and then.
        gateway, now = self.gateway, time.time()
        self.rounds += 1
        states = models.IN_FLIGHT if self.rounds % 60 == 0 else [s for s in models.IN_FLIGHT if s != models.ANALYSING]
        rows = list(Message.select(Message.id, Message.state, Message.answered)
                    .where(Message.state.in_(states), Message.next_attempt <= now, Message.node == gateway.node)
                    .order_by(Message.next_attempt).limit(5000))
        if models.shared():
            rows += analysed_elsewhere(gateway.node, now)
        for row in rows:
            if gateway.registry.is_held(row.id):
                continue
            if row.answered or gateway.registry.waiter(row.id):
                gateway.submit(row.id, row.state)


def analysed_elsewhere(node, now):
    """``node``'s messages waiting for vxCube that no live analysis will wake: with a shared
    database another node may have finished the analysis they waited for, or finished it while
    their file check was being written (the check stage then starts their analysis again)."""
    from salmon_app.analysis import live_sample
    waiting = FileCheck.select(FileCheck.id).where(FileCheck.message == Message.id, FileCheck.verdict == "",
                                                   fn.EXISTS(live_sample(now)))
    return list(Message.select(Message.id, Message.state, Message.answered)
                .where(Message.node == node, Message.state == models.ANALYSING, ~fn.EXISTS(waiting)).limit(5000))
