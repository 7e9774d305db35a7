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

from salmon_app.storage import engine, keptlock
from salmon_app.storage.groupsync import fsync_path

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
    """A peewee condition on a node ``column``: ``base`` or one of its processes' nodes (exact
    and case-sensitive: peewee's startswith is ILIKE, and ``mx`` is not ``MX/1``'s node)."""
    from peewee import fn
    prefix = base + "/"
    return (column == base) | (fn.substr(column, 1, len(prefix)) == prefix)


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


JOURNAL = "adopting"       # in SpoolDir: the processes whose mail is being given to process 0


def adopt(config, processes):
    """Give process 0 the mail of every process numbered ``processes`` or higher; returns how
    many messages moved. Run while no process of this daemon runs (the master, or the single
    process before its recovery; the state lock is held).

    The processes to adopt are written to a journal first, so an adoption cut short by a crash
    is finished at the next start even if ``Processes`` was raised again meanwhile. Files move
    before records (a modified copy before its original: a message is only relayed from where
    its original is); recovery counts a file with a record of any of this daemon's nodes as
    recorded (``recovery.unrecorded``), so it never removes a moved file whose record still
    names its old process."""
    from salmon_app.storage import models
    from salmon_app.storage.models import Message, Node, Sample
    from salmon_app.storage.spool import Spool
    base = engine.node_name(config)
    journal = os.path.join(config.SpoolDir, JOURNAL)
    slots = set(_journal_slots(journal))
    slots |= set(process_dirs(config.SpoolDir, processes))
    named = {n for (n,) in Node.select(Node.name).where(family(Node.name, base)).tuples()}
    named |= {n for (n,) in Message.select(Message.node).where(family(Message.node, base)).distinct().tuples()}
    named |= {n for (n,) in Sample.select(Sample.node).where(family(Sample.node, base)).distinct().tuples()}
    slots |= {_slot_of(n, base) for n in named if _slot_of(n, base) >= processes}
    if not slots:
        return 0
    _write_journal(journal, sorted(slots))
    target = Spool(config.SpoolDir)
    moved_files = 0
    for slot in sorted(slots):
        folder = spool_dir(config.SpoolDir, slot)
        if not os.path.isdir(folder):
            continue
        old = Spool(folder)
        old.clean_tmp()         # never acknowledged
        for queue_id in list(old.queue_ids()):
            for suffix in (".out", ".eml"):
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
    _fsync_tree(target.directory)       # the process folders are below it: both ends of every rename
    retired = [name(base, slot) for slot in sorted(slots)]
    messages = 0
    with models.writing():
        for node in retired:
            messages += Message.update(node=base).where(Message.node == node).execute()
            Sample.update(node=base).where(Sample.node == node).execute()
            Node.delete().where(Node.name == node).execute()
    for slot in slots:
        _remove_empty(spool_dir(config.SpoolDir, slot))
    os.unlink(journal)
    if messages or moved_files:
        LOG.warning("Processes lowered: the mail of %s (%d records, %d files) now belongs to %s",
                    ", ".join(retired), messages, moved_files, base)
    return messages


def _slot_of(node, base):
    """k for ``base/k``, 0 for ``base`` or anything else."""
    head, _, tail = node.rpartition("/")
    return int(tail) if head == base and tail.isdigit() else 0


def _journal_slots(path):
    try:
        with open(path) as handle:
            return [int(word) for word in handle.read().split() if word.isdigit()]
    except FileNotFoundError:
        return []


def _write_journal(path, slots):
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600), "w") as handle:
        handle.write(" ".join(str(slot) for slot in slots) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)
    fsync_path(os.path.dirname(path))


def _fsync_tree(directory):
    for folder, _, _ in os.walk(directory):
        fsync_path(folder)


def _remove_empty(folder):
    try:
        os.unlink(os.path.join(folder, keptlock.NAME))     # a stopped process's: nobody holds it
    except FileNotFoundError:
        pass
    for path, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(path)
        except OSError:
            pass
