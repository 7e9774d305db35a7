"""The nodes of one daemon's processes (``Processes``): their names, their spools, and the mail
of processes that are no longer started.

With ``Processes = N`` the daemon runs N processes on the same sockets and database. Each one
is a node of its own, as separate machines sharing PostgreSQL are, so everything that keeps a
node's mail moving (recovery, the sweeper, relay retries, sample polling, take-over of a dead
node's samples) works per process unchanged, and no two processes ever touch one message.
Process 0 is ``NodeName`` with ``SpoolDir``; process k is ``NodeName/k`` with
``SpoolDir/proc-k``. When N is lowered, ``adopt()`` gives the mail of the processes no longer
started (records, message files, waiting samples) to process 0 before any process starts.
"""
import logging
import os
import re

from salmon_app.storage import engine

LOG = logging.getLogger("vxgate")
_DIR = re.compile(r"proc-([1-9][0-9]{0,3})")


def count(config):
    """How many processes the configuration asks for (``Processes = 0``: one per CPU core)."""
    return config.Processes or len(os.sched_getaffinity(0)) or 1


def name(base, slot):
    return base if slot == 0 else "%s/%d" % (base, slot)


def spool_dir(spool, slot):
    return spool if slot == 0 else os.path.join(spool, "proc-%d" % slot)


def is_subnode(node):
    """True for the node of a process other than the first (``alpha/2``): NodeName has no '/'."""
    return "/" in node


def family(column, base):
    """A peewee condition on a node ``column``: ``base`` or one of its processes' nodes."""
    return (column == base) | column.startswith(base + "/")


def slot_config(config, slot, processes):
    """Process ``slot``'s configuration: its node name and spool, its share of the upload budget
    (counted per process), and its metrics on a loopback port of its own that the first
    process's /metrics adds up (``salmon_app/processes.py``)."""
    from salmon_app.config import SocketAddr
    budget = config.VxcubeUploadBudget
    return config.replace(NodeName=name(engine.node_name(config), slot), SpoolDir=spool_dir(config.SpoolDir, slot),
                          MetricsSocket=SocketAddr(host="127.0.0.1", port=0) if config.MetricsSocket else None,
                          VxcubeUploadBudget=max(1, budget // processes) if budget else budget)


def process_dirs(spool, processes):
    """{slot: spool folder} of the processes numbered ``processes`` or higher that have one."""
    found = {}
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return found
    for entry in names:
        match = _DIR.fullmatch(entry)
        if match and int(match.group(1)) >= processes:
            found[int(match.group(1))] = os.path.join(spool, entry)
    return found


def adopt(config, processes):
    """Give process 0 the mail of every process numbered ``processes`` or higher; returns how
    many messages moved. Run by the master while no process runs (it holds the state lock).

    Files move first, records after: a crash in between is finished by the next start. Recovery
    counts a file with a record of any of this daemon's nodes as recorded
    (``recovery.unrecorded``), so it never removes a moved file whose record still names its
    old node."""
    from salmon_app.storage import models
    from salmon_app.storage.models import Message, Node, Sample
    from salmon_app.storage.spool import Spool
    base = engine.node_name(config)
    target = Spool(config.SpoolDir)
    moved_files = 0
    for slot, folder in sorted(process_dirs(config.SpoolDir, processes).items()):
        old = Spool(folder)
        old.clean_tmp()         # never acknowledged
        for queue_id in list(old.queue_ids()):
            for suffix in (".eml", ".out"):
                source = old.path(queue_id)[:-4] + suffix
                if os.path.exists(source):
                    destination = target.path(queue_id)[:-4] + suffix
                    os.makedirs(os.path.dirname(destination), mode=0o700, exist_ok=True)
                    os.rename(source, destination)
                    moved_files += suffix == ".eml"
        samples = os.path.join(folder, "samples")
        if os.path.isdir(samples):
            for digest in os.listdir(samples):
                data = old.read_sample(digest)
                if data is not None:
                    target.store_sample(digest, data)
                old.remove_sample(digest)
        _fsync_tree(target.directory)
    retired = [n.name for n in Node.select(Node.name).where(family(Node.name, base))
               if n.name != base and int(n.name.rsplit("/", 1)[1]) >= processes]
    messages = 0
    for node in retired:
        with models.writing():
            messages += Message.update(node=base).where(Message.node == node).execute()
            Sample.update(node=base).where(Sample.node == node).execute()
            Node.delete().where(Node.name == node).execute()
    for slot, folder in process_dirs(config.SpoolDir, processes).items():
        _remove_empty(folder)
    if messages or moved_files:
        LOG.warning("Processes lowered: the mail of %s (%d records, %d files) now belongs to %s",
                    ", ".join(retired) or "earlier processes", messages, moved_files, base)
    return messages


def _fsync_tree(directory):
    for folder, _, _ in os.walk(directory):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_empty(folder):
    for path, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(path)
        except OSError:
            pass
