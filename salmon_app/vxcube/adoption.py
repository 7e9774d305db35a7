"""Samples of a node that stopped: a node still waiting for one takes its analysis over.

With a shared database one node uploads and polls each distinct file (the first to claim its
``Sample`` row); the others wait for its verdict. If that node stops (its ``Node`` row not
seen for ``STALE`` seconds), the waiting nodes would wait until it returns. Instead, a node
whose own messages wait for such a sample claims the row (a compare-and-set on its node
column, so one node wins) and goes on from the sample's state: an upload already made is
polled with the same analysis id; a file not yet uploaded is taken again from one of the
node's own messages, since the content was in the stopped node's spool.
"""
import hashlib
import logging
import time

from salmon_app.storage import models
from salmon_app.storage.models import FileCheck, Message, Node, Sample
from salmon_app.vxcube.extract import extract

LOG = logging.getLogger("vxgate.analysis")
STALE = 60.0      # a node's sweeper writes its heartbeat every ~10 s


def adopt(analyser, now=None):
    """Claim the samples this node's messages wait for whose node stopped; returns their SHA-256s."""
    gateway = analyser.gateway
    me, now = gateway.node, now or time.time()
    gone = [n.name for n in Node.select(Node.name).where(Node.seen < now - STALE, Node.name != me)]
    if not gone:
        return []
    mine = Message.select(Message.id).where(Message.node == me, Message.state == models.ANALYSING)
    waiting = {}
    for check in FileCheck.select(FileCheck.sha256, FileCheck.message).where(
            FileCheck.verdict == "", FileCheck.message.in_(mine)):
        waiting.setdefault(check.sha256, check.message)
    adopted = []
    for sample in list(Sample.select().where(Sample.sha256.in_(list(waiting)), Sample.state != "done",
                                             Sample.node.in_(gone))):       # read in full: see recovery.recover
        if sample.state == "queued" and not _take_content(analyser, sample, waiting[sample.sha256]):
            continue
        with models.writing():
            claimed = (Sample.update(node=me, next_step=now)
                       .where(Sample.sha256 == sample.sha256, Sample.node == sample.node).execute())
        if claimed:
            LOG.warning("sample %s: node %s stopped; this node takes its analysis over", sample.sha256[:12], sample.node)
            adopted.append(sample.sha256)
            analyser.submit(sample.sha256)
    return adopted


def _take_content(analyser, sample, queue_id):
    """Put the sample's content in this node's spool from one of its own messages."""
    spool = analyser.gateway.spool
    if spool.read_sample(sample.sha256) is not None:
        return True
    try:
        raw = spool.read(queue_id)
    except OSError:
        return False
    if hashlib.sha256(raw).hexdigest() == sample.sha256:      # VxcubeSendMode = Message
        spool.store_sample(sample.sha256, raw)
        return True
    for item in extract(raw, analyser.types).selected:
        if item.sha256 == sample.sha256:
            spool.store_sample(item.sha256, item.content)
            return True
    return False
