"""Quarantine metadata through peewee: messages, their recipients, history and the verdict cache.

The database (SQLite in WAL mode, or PostgreSQL shared by several nodes: ``engine.py``) is used
by the daemon's threads and by ``vxgate`` commands run beside it. Writes go through
``writing()``. On SQLite that is one in-process lock plus ``BEGIN IMMEDIATE``, so a transaction
that reads then writes never fails with "database is locked", and threads queue on a Python
lock instead of SQLite's sleeping busy handler (which costs milliseconds per collision). On
PostgreSQL each thread has its own connection and transaction, and the server orders them;
rows several nodes may create at once are inserted with ``ON CONFLICT DO NOTHING``.
Every message record names the node (``NodeName``) whose spool holds its file.
"""
import collections
import contextlib
import json
import os
import sqlite3
import threading
import time
import zlib

import peewee

from salmon_app.storage import engine, groupsync
from salmon_app.storage.processlock import ProcessLock, try_exclusive

db = peewee.DatabaseProxy()
_WRITE_LOCK = threading.RLock()
_GROUP = None       # the WAL's group fsync when the daemon opened SQLite (open_database)
_PROCESS_LOCK = None   # a ProcessLock serialising SQLite writers of several processes (``Processes``)

# Life of a message. Final states never change again except by an administrator's command.
STORED, CHECKING, ANALYSING, RELAYING, DEFERRED = "stored", "checking", "analysing", "relaying", "deferred"
DELIVERED, QUARANTINED, REJECTED, DISCARDED, TEMPFAILED, FAILED, DROPPED, HELD = (
    "delivered", "quarantined", "rejected", "discarded", "tempfailed", "failed", "dropped", "held")
REPORTED, CLOSED = "reported", "closed"     # BCC copies: a report was sent / nothing to report
PARKED = "parked"      # put on hold by an administrator (vxgate queue hold); goes on when released
IN_FLIGHT = (STORED, CHECKING, ANALYSING, RELAYING, DEFERRED)
FINAL = (DELIVERED, QUARANTINED, REJECTED, DISCARDED, TEMPFAILED, FAILED, DROPPED, HELD, REPORTED, CLOSED)
OWNED = IN_FLIGHT + (PARKED,)       # not finished: never expired or deleted without --force
KEPT = (QUARANTINED, HELD)          # final, and kept for an administrator: bodies shared with every node


class BaseModel(peewee.Model):
    class Meta:
        database = db


class Message(BaseModel):
    id = peewee.CharField(primary_key=True)          # the queue id, unguessable
    mode = peewee.CharField(index=True)               # smtp, bcc, notice, report
    state = peewee.CharField(index=True)
    answered = peewee.BooleanField(default=False)     # 250 sent: we own it, Postfix forgot it
    created = peewee.DoubleField(index=True)
    updated = peewee.DoubleField()
    mail_from = peewee.TextField()
    rcpt_json = peewee.TextField()
    client_json = peewee.TextField(default="{}")      # XFORWARD attributes and the peer
    params_json = peewee.TextField(default="{}")      # MAIL/RCPT parameters (BODY, SMTPUTF8, DSN)
    size = peewee.IntegerField()
    sha256 = peewee.CharField()
    body_8bit = peewee.BooleanField(default=False)
    smtputf8 = peewee.BooleanField(default=False)
    subject = peewee.TextField(default="")
    header_from = peewee.TextField(default="")
    message_id = peewee.TextField(default="")
    verdict = peewee.CharField(default="none", index=True)
    action = peewee.CharField(default="")
    reason = peewee.TextField(default="")
    analysis_json = peewee.TextField(default="{}")
    attempts = peewee.IntegerField(default=0)
    next_attempt = peewee.DoubleField(default=0)
    recoveries = peewee.IntegerField(default=0)
    next_hop_id = peewee.TextField(default="")
    last_reply = peewee.TextField(default="")
    parent = peewee.CharField(null=True, index=True)  # a notice's or report's subject message
    has_file = peewee.BooleanField(default=True)
    parked_from = peewee.CharField(default="")        # the state a parked message goes back to
    node = peewee.CharField(default="", index=True)   # NodeName of the node whose spool holds the file

    def _parsed(self, column):
        """The JSON of ``column``, parsed once per value: rcpt_to and client are read several
        times per message on the hot path."""
        text = self.__data__.get(column)
        parsed = self.__dict__.get("_vx_json")
        if parsed is None:
            parsed = self.__dict__["_vx_json"] = {}
        cached = parsed.get(column)
        if cached is None or cached[0] is not text:
            cached = parsed[column] = (text, json.loads(text))
        return cached[1]

    @property
    def rcpt_to(self):
        return list(self._parsed("rcpt_json"))     # a copy: callers may change their list

    @property
    def client(self):
        return self._parsed("client_json")

    @property
    def params(self):
        return self._parsed("params_json")     # read only: callers take what they need

    def remember(self, column, value):
        """``value`` is what the JSON of ``column`` parses to (the record was just made from it)."""
        self.__dict__.setdefault("_vx_json", {})[column] = (self.__data__.get(column), value)


class Recipient(BaseModel):
    message = peewee.CharField(index=True)
    address = peewee.TextField()
    state = peewee.CharField(default="pending")       # pending, delivered, deferred, bounced
    reply = peewee.TextField(default="")


class Event(BaseModel):
    message = peewee.CharField(index=True)
    time = peewee.DoubleField()
    kind = peewee.CharField()
    text = peewee.TextField(default="")


class Sample(BaseModel):
    """One distinct content and its analysis; also the verdict cache."""
    sha256 = peewee.CharField(primary_key=True)
    state = peewee.CharField(index=True)         # queued, uploaded, analysing, done
    name = peewee.TextField(default="")
    kind = peewee.CharField(default="file")      # file, or message (an .eml vxCube splits)
    sample_id = peewee.TextField(default="")
    analysis_id = peewee.TextField(default="")
    format_name = peewee.TextField(default="")
    platforms = peewee.TextField(default="[]")
    verdict = peewee.CharField(default="")
    maliciousness = peewee.IntegerField(null=True)
    tasks_json = peewee.TextField(default="[]")
    reason = peewee.TextField(default="")
    created = peewee.DoubleField()
    started = peewee.DoubleField(default=0)
    finished = peewee.DoubleField(default=0)
    next_step = peewee.DoubleField(default=0, index=True)
    polls = peewee.IntegerField(default=0)
    uploaded = peewee.BooleanField(default=False)
    parent = peewee.CharField(null=True)         # the .eml sample it was split from
    node = peewee.CharField(default="")          # the node that uploads and polls it (holds the file)


class FileCheck(BaseModel):
    """A file of a message and its verdict (copied from its Sample when that ends)."""
    message = peewee.CharField(index=True)
    path = peewee.CharField(default="")
    name = peewee.TextField(default="")
    type = peewee.CharField(default="")
    size = peewee.IntegerField(default=0)
    sha256 = peewee.CharField(index=True)
    verdict = peewee.CharField(default="")       # empty while pending
    maliciousness = peewee.IntegerField(null=True)
    analysis_id = peewee.TextField(default="")
    tasks_json = peewee.TextField(default="[]")
    reason = peewee.TextField(default="")
    cached = peewee.BooleanField(default=False)


class Release(BaseModel):
    """The released marker of a message (the history keeps every release as an Event)."""
    message = peewee.CharField(primary_key=True)
    state = peewee.CharField(default="sending")       # sending (a claim), done
    time = peewee.DoubleField()
    user = peewee.TextField(default="")
    recipients = peewee.TextField(default="")         # comma-separated envelope recipients
    reply = peewee.TextField(default="")
    count = peewee.IntegerField(default=0)             # completed releases

    class Meta:
        table_name = "quarantine_release"


class ReleaseRequest(BaseModel):
    """A recipient's request to release a message (web console), and the administrator's answer."""
    message = peewee.CharField(index=True)
    recipient = peewee.TextField()
    state = peewee.CharField(default="pending", index=True)   # pending, approved, refused, released
    time = peewee.DoubleField()
    decided = peewee.DoubleField(default=0)
    decided_by = peewee.TextField(default="")

    class Meta:
        table_name = "web_release_request"


class Body(BaseModel):
    """A kept message's bytes in the database, so every node can show, export or release it
    (with a shared database: amavisd-new's SQL quarantine is the precedent)."""
    message = peewee.CharField(primary_key=True)
    data = peewee.BlobField()
    size = peewee.IntegerField()
    sha256 = peewee.CharField()
    stored = peewee.DoubleField()


class Node(BaseModel):
    """One row per node: when it last ran its sweeper, by its clock and by the database's."""
    name = peewee.CharField(primary_key=True)
    started = peewee.DoubleField(default=0)
    seen = peewee.DoubleField(default=0)             # the node's clock
    skew = peewee.DoubleField(null=True)             # node clock - database clock (PostgreSQL)
    version = peewee.CharField(default="")


class Probe(BaseModel):
    """One row rewritten to learn whether the database can be written (salmon_app/storage/durability.py)."""
    time = peewee.DoubleField()


MODELS = [Message, Recipient, Event, Sample, FileCheck, Release, ReleaseRequest, Body, Node, Probe]


def open_database(where, synchronous="FULL", busy_timeout=30.0, *, upgrade=None, group_commit=False, several=False):
    """Open and bind the database at ``where`` (a SQLite path or a URL); returns the peewee database.

    The schema must be the one this vxgate knows (``migrations.check``): a new or older SQLite
    file is brought up to date in place unless ``upgrade`` is False (a single node owns it);
    PostgreSQL is only ever upgraded by ``vxgate db upgrade``.

    ``group_commit`` (the daemon): on SQLite a COMMIT no longer fsyncs the WAL itself
    (``synchronous=NORMAL``); ``writing()`` returns only after a group fsync of the WAL that
    started after that COMMIT, shared by every thread that committed meanwhile. A transaction
    is thus as durable when ``writing()`` returns as with ``synchronous=FULL``, and a process
    crash (the WAL's pages are the kernel's) never loses one even before. On PostgreSQL the
    server already flushes the WAL of concurrent commits together: nothing changes there.

    ``several``: the processes of one daemon (``Processes`` > 1) share this database as nodes of
    their own (``storage/subnodes.py``). On SQLite their write transactions then also queue on a
    ``flock`` beside the file: SQLite's own busy handler sleeps 1, 2, 5... ms per collision."""
    global _GROUP, _PROCESS_LOCK, _WRITER, _LOCKED_OUT
    from salmon_app.storage import migrations
    sqlite = engine.parse(where)[0] == "sqlite"
    if group_commit and sqlite:
        synchronous = "NORMAL"
    database = engine.connect(where, synchronous=synchronous, busy_timeout=busy_timeout, pooled=group_commit)
    database.vx_several, database.vx_busy_timeout = several, busy_timeout
    db.initialize(database)
    _GROUP, _LOCKED_OUT = None, False
    if _WRITER is not None:
        close_writer()
    if _PROCESS_LOCK is not None:
        _PROCESS_LOCK.close()
        _PROCESS_LOCK = None
    if several and sqlite:
        _PROCESS_LOCK = ProcessLock(database.database + ".writer")
    if group_commit and sqlite:
        target = database.database
        _GROUP = groupsync.GroupSync(lambda: groupsync.fsync_path(target + "-wal", fallback=target,
                                                                       sync=os.fdatasync))
        _WRITER = peewee.SqliteDatabase._connect(database)
    _SQL.clear()
    if upgrade is None:
        upgrade = database.vx_engine == "sqlite"
    migrations.check(database, upgrade=upgrade)
    return database


def shared():
    """True when several nodes may share this database: PostgreSQL, or the processes of one
    daemon on SQLite (``Processes``)."""
    return postgres() or getattr(db.obj, "vx_several", False)


def postgres():
    """True when the database is PostgreSQL (its SQL dialect and advisory locks)."""
    return getattr(db.obj, "vx_engine", "sqlite") != "sqlite"


_DEPTH = threading.local()


class Commit:
    """A transaction's durability: ``wait()`` returns once it is on disk (at once if it is)."""

    def __init__(self, group=None, ticket=None):
        self.group, self.ticket = group, ticket

    def wait(self):
        if self.ticket is not None:
            self.group.wait(self.ticket)

    def forget(self):
        """The message was refused after all: True when its record is not written and never
        will be (``_Record``: False once a transaction took it)."""
        return True


_DURABLE = Commit()


@contextlib.contextmanager
def writing(defer=False):
    """A write transaction; on SQLite one that cannot meet "database is locked" in this process.

    Nested calls join the outer transaction. Plain BEGIN/COMMIT on peewee's autocommit
    connection: peewee's atomic() cost more CPU than the statements it wrapped.

    Yields a ``Commit``. With ``defer`` (the daemon's group commit on SQLite) the transaction
    is committed but not yet fsynced on return: the caller must ``wait()`` on the Commit
    before it acknowledges anything that rests on it. Any later transaction made durable
    makes this one durable too (the WAL is written in order), so a message's record need not
    wait for its own fsync while the message is checked and relayed: the outcome's commit
    covers it."""
    depth = getattr(_DEPTH, "n", 0)
    if depth:
        _DEPTH.n = depth + 1
        try:
            yield _DURABLE      # the outer transaction decides when it is durable
        finally:
            _DEPTH.n = depth
        return
    if _WRITER is not None:
        with _batched(defer) as commit:
            yield commit
        return
    local = not postgres()
    group = _GROUP if local else None
    ticket = None
    commit = Commit()
    processes = _PROCESS_LOCK if local else None
    if local:
        _WRITE_LOCK.acquire()
        if processes is not None:
            try:
                processes.acquire(db.obj.vx_busy_timeout)
            except BaseException:
                _WRITE_LOCK.release()
                raise
    _DEPTH.n = 1
    try:
        connection = db.connection()
        connection.execute("BEGIN IMMEDIATE" if local else "BEGIN")
        try:
            yield commit
            connection.execute("COMMIT")
            if group is not None:
                ticket = group.ticket()     # taken under the lock: its COMMIT is written
        except BaseException:
            # a COMMIT that failed (disk full) may leave the transaction open: end it, or
            # every later BEGIN fails with "cannot start a transaction within a transaction"
            _rollback(connection)
            raise
    finally:
        _DEPTH.n = 0
        if local:
            if processes is not None:
                processes.release()
            _WRITE_LOCK.release()
    if ticket is not None:
        commit.group, commit.ticket = group, ticket
        if not defer:
            group.wait(ticket)      # durable on return; the fsync runs outside the write lock


_WRITER = None      # the daemon's one SQLite connection for every write transaction (batched)
_BATCH = None       # the transaction open on it, shared by the writers queued meanwhile
_QUEUED = collections.deque()   # one item per thread waiting for _WRITE_LOCK (deque ops are atomic)
_RECORDS = collections.deque()  # new messages' records not yet written (insert_message, defer)
BATCH_WRITES, BATCH_SECONDS = 64, 0.010


class _Batch:
    def __init__(self):
        self.members, self.opened = 0, time.monotonic()
        self.done = threading.Event()
        self.error = self.ticket = None
        self.records = []       # the queued records its transaction wrote (_flush_records)


class _Record(Commit):
    """A new message's record waiting for the next write transaction, and its durability.

    Writing it in the session's own transaction cost a tenth of vxgate's CPU per message
    (a transaction, three statements and a wait for the commit, to be followed by the
    outcome's transaction milliseconds later). Every write transaction begins with the records queued (in
    order), so any later write about the message finds its row; ``wait()`` writes it now if
    nothing has, and returns once it is on disk."""

    def __init__(self, insert, values, recipients, queue_id="", mode=""):
        super().__init__()
        self.insert, self.values, self.recipients = insert, values, recipients
        self.queue_id, self.mode = queue_id, mode
        self.batch = None       # the batch that wrote it; None while queued
        self.error = None       # why it cannot be written at all

    def wait(self):
        while True:
            if self.error is not None:
                raise self.error
            batch = self.batch
            if batch is None:
                if _WRITER is None:
                    raise sqlite3.InterfaceError("the database was closed before the message's record was written")
                if getattr(_DEPTH, "n", 0):     # the open transaction began before it was queued
                    raise RuntimeError("a record's wait() inside a write transaction")
                with writing():     # a transaction of its own writes it (raises while storage fails)
                    pass
                continue
            if _finished(batch) is None:
                break
            if self.batch is batch:     # not queued again (cannot happen: _end_batch does)
                raise batch.error
        _GROUP.wait(batch.ticket)

    def forget(self):
        with _WRITE_LOCK:
            try:
                _RECORDS.remove(self)
                return True
            except ValueError:      # a transaction took it (maybe one that failed: it may come back)
                return self.error is not None


_RECIPIENTS_SQL = ('INSERT INTO "recipient" ("message", "address", "state", "reply") '
                   "VALUES (?, ?, 'pending', '')")


def _flush_records(batch, savepoint=True):
    """Under _WRITE_LOCK, in ``batch``'s transaction before a writer's own statements: the
    queued records. On failure none of them stays written (without ``savepoint``, the caller
    rolls the transaction back) and all stay queued, in order."""
    if not _RECORDS:
        return
    taken = []
    if savepoint:
        _WRITER.execute("SAVEPOINT r")
    try:
        while _RECORDS:
            record = _RECORDS[0]
            try:
                _WRITER.execute(record.insert, record.values)
                _WRITER.executemany(_RECIPIENTS_SQL, record.recipients)
            except sqlite3.OperationalError:
                raise           # the database's fault (full, locked): every record stays queued
            except Exception as exc:
                # this one can never be written (its wait() says why); it must not hold up the others
                record.error = exc
            else:
                taken.append(record)
            _RECORDS.popleft()
    except BaseException:
        _RECORDS.extendleft(reversed(taken))
        if savepoint and _WRITER.in_transaction:
            try:
                _WRITER.execute("ROLLBACK TO r")
                _WRITER.execute("RELEASE r")
            except Exception:
                pass
        raise
    for record in taken:
        record.batch = batch
    batch.records += taken


@contextlib.contextmanager
def _batched(defer):
    """One writer's part of a batch; the last writer queued commits for all of them.

    The writer that begins a batch has the transaction to itself while it writes, and undoes
    all of it if it fails; those that join it write in a SAVEPOINT of their own. A savepoint
    costs SQLite a copy of each page it changes, and most batches have a single writer."""
    global _BATCH
    _QUEUED.append(None)
    try:
        _WRITE_LOCK.acquire()
    finally:
        _QUEUED.pop()
    state = db.obj._state
    saved = state.conn, state.closed
    commit = Commit()
    failure = None
    try:
        alone = _BATCH is None
        if alone:
            _begin()
            _BATCH = _Batch()
        batch = _BATCH
        batch.members += 1
        marked = False          # our own savepoint exists (a ROLLBACK TO w before it would undo another's)
        try:
            _flush_records(batch, savepoint=not alone)
            if not alone:
                _WRITER.execute("SAVEPOINT w")
                marked = True
            state.conn, state.closed = _WRITER, False
            _DEPTH.n = 1
            yield commit        # no RELEASE: the savepoints of a batch nest until its COMMIT
        except BaseException as exc:
            failure = exc
            if marked:
                try:
                    _WRITER.execute("ROLLBACK TO w")
                    _WRITER.execute("RELEASE w")
                except Exception:
                    pass
            elif alone:     # nobody else's writes are in it: all goes
                _rollback(_WRITER)
            if alone or not _WRITER.in_transaction:     # or SQLite gave up the whole transaction (I/O error)
                _end_batch(batch, exc)
            raise
        finally:
            _DEPTH.n = 0
            state.conn, state.closed = saved
            if _BATCH is batch and (not _QUEUED or batch.members >= BATCH_WRITES
                                    or time.monotonic() - batch.opened > BATCH_SECONDS):
                _commit_batch(batch, failure)
    finally:
        _WRITE_LOCK.release()
    if _finished(batch) is not None:
        raise batch.error
    commit.group, commit.ticket = _GROUP, batch.ticket
    if not defer:
        commit.wait()


_LOCKED_OUT = False      # a writer waited the whole busy time-out for the write lock in vain
BRIEF_WAIT = 0.2         # how long the writers after it wait, until one gets the lock again


def _begin():
    """Under _WRITE_LOCK: the processes' lock, then BEGIN IMMEDIATE on the shared connection.

    Once one writer has waited the whole busy time-out in vain (another process holds the
    lock: stopped, or stuck), the next ones wait only briefly until one gets it again. Each
    waiting the whole time-out in turn would keep the sessions behind them waiting for
    minutes, and the sending MTA would give up and send again mail already relayed; failing
    soon, a settled outcome is kept in memory (durability.py) and its reply goes out."""
    global _LOCKED_OUT
    patience = BRIEF_WAIT if _LOCKED_OUT else db.obj.vx_busy_timeout
    if _PROCESS_LOCK is not None:
        try:
            _PROCESS_LOCK.acquire(patience)
        except sqlite3.OperationalError:
            _LOCKED_OUT = True
            raise
    try:
        if _WRITER.in_transaction:      # a ROLLBACK that failed (an I/O error) left it open
            _WRITER.execute("ROLLBACK")
        if _LOCKED_OUT:
            _WRITER.execute("PRAGMA busy_timeout = %d" % (patience * 1000))
        _WRITER.execute("BEGIN IMMEDIATE")
    except BaseException as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            _LOCKED_OUT = True
        if _PROCESS_LOCK is not None:
            _PROCESS_LOCK.release()
        raise
    if _LOCKED_OUT:
        _LOCKED_OUT = False
        try:        # the transaction is open: nothing may end this function but a batch
            _WRITER.execute("PRAGMA busy_timeout = %d" % (db.obj.vx_busy_timeout * 1000))
        except sqlite3.Error:
            pass


def _commit_batch(batch, failure=None):
    # under _WRITE_LOCK
    try:
        _WRITER.execute("COMMIT")
        batch.ticket = _GROUP.ticket()
        _end_batch(batch, None)
    except BaseException as exc:
        _rollback(_WRITER)      # a COMMIT that failed (disk full) may leave the transaction open
        _end_batch(batch, exc)
        if failure is None:
            raise


def _end_batch(batch, error):
    global _BATCH
    if _BATCH is batch:
        _BATCH = None
        if _PROCESS_LOCK is not None:
            _PROCESS_LOCK.release()
    if batch.error is None:
        batch.error = error
    if batch.error is not None and batch.records:
        # its transaction is gone, and the records it wrote with it: the next one writes them
        for record in batch.records:
            record.batch = None
        _RECORDS.extendleft(reversed(batch.records))
        batch.records = []
    batch.done.set()


def close_writer():
    """Close the daemon's write connection (shut-down): nothing is committed after this."""
    global _WRITER
    with _WRITE_LOCK:
        if _WRITER is not None:
            if _BATCH is not None:      # its writers wait for it: committed, or told it failed
                try:
                    _commit_batch(_BATCH)
                except Exception:
                    pass
            _WRITER.close()
            _WRITER = None
            # records of messages still unanswered (any answer writes them first): their
            # sessions get a 451, and a restart removes their files
            _RECORDS.clear()


def _finished(batch):
    """Wait until ``batch`` is committed or failed; its error, or None."""
    while not batch.done.wait(1.0):
        _take_over(batch)
    return batch.error


def _take_over(batch):
    """A batch nobody committed (a writer counted as queued never came): commit it here."""
    with _WRITE_LOCK:
        if _BATCH is batch:
            try:
                _commit_batch(batch)
            except Exception:
                pass


def _rollback(connection):
    try:
        if hasattr(connection, "in_transaction"):      # SQLite's (psycopg's has no such attribute)
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        elif not (connection.closed or connection.broken):
            connection.rollback()
    except Exception:
        pass     # the connection is gone; the next use reconnects (engine.Postgres)


# The per-message statements below run several times for every message, so they are plain
# SQL built once: peewee spent a third of vxgate's CPU composing the same statements again.
_SQL = {}


def _execute(sql, params=()):
    # the driver's connection itself: peewee's execute_sql adds a cursor and a log call per statement
    return db.connection().execute(_native(sql), params)


def _executemany(sql, rows):
    connection = db.connection()
    if isinstance(connection, sqlite3.Connection):
        return connection.executemany(sql, rows)
    with connection.cursor() as cursor:
        cursor.executemany(_native(sql), rows)


def _native(sql):
    """``sql`` written with SQLite's ``?`` placeholders in the driver's own style (cached)."""
    if postgres():
        key = ("pg", sql)
        if key not in _SQL:
            _SQL[key] = sql.replace("?", "%s")
        return _SQL[key]
    return sql


def _update_sql(columns):
    key = ("update",) + columns
    if key not in _SQL:
        _SQL[key] = 'UPDATE "message" SET %s WHERE "id" = ?' % ", ".join('"%s" = ?' % c for c in columns)
    return _SQL[key]


_MESSAGE_DEFAULTS = None


def insert_message(values, recipients, defer=False):
    """Insert a message record (missing columns take their model defaults) and its recipients;
    returns (the row, its ``Commit``: see ``writing(defer)``). With ``defer`` in the daemon on
    SQLite, the record waits for the next write transaction (``_Record``): until then no other
    reader sees it, and a crash forgets it with the message, which nobody was told of yet."""
    global _MESSAGE_DEFAULTS
    if _MESSAGE_DEFAULTS is None:
        _MESSAGE_DEFAULTS = {f.column_name: f.default for f in Message._meta.sorted_fields
                             if f.default is not None and not callable(f.default)}
    row = dict(_MESSAGE_DEFAULTS, **values)
    columns = tuple(row)
    key = ("insert",) + columns
    if key not in _SQL:
        _SQL[key] = 'INSERT INTO "message" (%s) VALUES (%s)' % (
            ", ".join('"%s"' % c for c in columns), ", ".join("?" * len(columns)))
    recipient_rows = [(values["id"], a) for a in recipients]
    if defer and _WRITER is not None and not getattr(_DEPTH, "n", 0):
        record = _Record(_SQL[key], tuple(row.values()), recipient_rows, row["id"], row.get("mode", ""))
        _RECORDS.append(record)
        return _instance(Message, row), record
    with writing(defer) as commit:
        _execute(_SQL[key], tuple(row.values()))
        _executemany(_RECIPIENTS_SQL, recipient_rows)
    return _instance(Message, row), commit


def _instance(model, row):
    """A model instance of the field values ``row``, built as peewee's cursor builds one:
    ``Model(**row)`` sets each field through its descriptor, a tenth of a message's record
    keeping on the hot path (``insert_message``'s columns are named as their fields)."""
    instance = model(__no_default__=1)
    instance.__data__.update(row)
    instance._dirty.clear()
    return instance


def log_event(queue_id, kind, text="", when=None):
    _execute('INSERT INTO "event" ("message", "time", "kind", "text") VALUES (?, ?, ?, ?)',
             (queue_id, when or time.time(), kind, text))


def update_message(queue_id, **fields):
    columns = tuple(fields)
    _execute(_update_sql(columns), tuple(fields.values()) + (queue_id,))


def set_state(queue_id, state, event=None, recipients=(), **fields):
    """Move a message to ``state`` with an optional history line and recipient outcomes
    [(address, state, reply)], all in one transaction."""
    now = time.time()
    with writing():
        update_message(queue_id, state=state, updated=now, **fields)
        if recipients:
            _executemany(
                'UPDATE "recipient" SET "state" = ?, "reply" = ? WHERE "message" = ? AND "address" = ? '
                "AND \"state\" IN ('pending', 'deferred')",
                [(rstate, reply, queue_id, address) for address, rstate, reply in recipients])
        if event:
            log_event(queue_id, state, event, now)


def keep_body(queue_id, data):
    """Store a kept message's bytes in the database (replacing an earlier copy)."""
    import hashlib
    digest = hashlib.sha256(data).hexdigest()
    _execute('INSERT INTO "body" ("message", "data", "size", "sha256", "stored") VALUES (?, ?, ?, ?, ?) '
             'ON CONFLICT ("message") DO UPDATE SET "data" = excluded."data", "size" = excluded."size", '
             '"sha256" = excluded."sha256", "stored" = excluded."stored"',
             (queue_id, data, len(data), digest, time.time()))


def kept_body(queue_id):
    """The bytes stored by ``keep_body``, or None."""
    row = _execute('SELECT "data" FROM "body" WHERE "message" = ?', (queue_id,)).fetchone()
    return bytes(row[0]) if row else None


def has_kept_body(queue_id):
    """True when ``keep_body`` stored the message's bytes."""
    return _execute('SELECT 1 FROM "body" WHERE "message" = ?', (queue_id,)).fetchone() is not None


def heartbeat(node, started=False):
    """Record that ``node`` runs, with its clock's distance from the database server's."""
    from salmon_app import installed_version
    now = time.time()
    server = engine.server_time(db.obj)
    skew = None if server is None else now - server
    version = installed_version()
    with writing():
        _execute('INSERT INTO "node" ("name", "started", "seen", "skew", "version") VALUES (?, ?, ?, ?, ?) '
                 'ON CONFLICT ("name") DO UPDATE SET "seen" = excluded."seen", "skew" = excluded."skew", '
                 '"version" = excluded."version"' + (', "started" = excluded."started"' if started else ""),
                 (node, now, now, skew, version))


_SAMPLE_LOCKS = 0x5659      # two-key advisory locks: the class, then advisory_key(sha256)


def advisory_key(text):
    """A PostgreSQL int4 advisory lock key for ``text`` (a collision only serialises two names)."""
    value = zlib.crc32(text.encode("utf-8"))
    return value - 2 ** 32 if value >= 2 ** 31 else value


def lock_samples(sha256s):
    """Inside ``writing()``: wait for every other transaction on these samples to end, and keep
    them out until this one does (PostgreSQL; SQLite has one writer). Taken in one order by
    all, so two messages carrying the same files in opposite orders cannot deadlock; and a
    check written under it cannot miss the verdict of a sample finished meanwhile."""
    if postgres():
        for key in sorted({advisory_key(digest) for digest in sha256s}):
            _execute("SELECT pg_advisory_xact_lock(?, ?)", (_SAMPLE_LOCKS, key))


@contextlib.contextmanager
def exclusive(name):
    """Yields True in the one process of all nodes that holds ``name`` now, False elsewhere
    (a PostgreSQL advisory lock; on SQLite a ``flock`` beside the file, which one daemon's
    processes share)."""
    if not postgres():
        if _PROCESS_LOCK is None:
            yield True      # one process owns the file
            return
        fd = os.open("%s.%08x" % (db.obj.database, zlib.crc32(name.encode())), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with try_exclusive(fd) as got:
            yield got
        return
    key = zlib.crc32(name.encode())
    got = _execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0]
    try:
        yield bool(got)
    finally:
        if got:
            _execute("SELECT pg_advisory_unlock(?)", (key,))


def fetch(model, key):
    """The row of ``model`` with primary key ``key`` as a model instance, or None: what
    ``get_or_none`` returns, from a statement built once (peewee composes its SELECT anew on
    every call, half a millisecond here: the cost of each vxCube poll that reads its sample)."""
    meta = model._meta
    name = ("fetch", meta.table_name)
    if name not in _SQL:
        _SQL[name] = 'SELECT %s FROM "%s" WHERE "%s" = ?' % (
            ", ".join('"%s"' % f.column_name for f in meta.sorted_fields), meta.table_name,
            meta.primary_key.column_name)
    row = _execute(_SQL[name], (key,)).fetchone()
    if row is None:
        return None
    return _instance(model, {field.name: field.python_value(value)
                             for field, value in zip(meta.sorted_fields, row)})


def due_samples(node, now, limit):
    """The sha256 of ``node``'s unfinished samples whose stored next step is due, soonest first."""
    cursor = _execute('SELECT "sha256" FROM "sample" WHERE "state" != \'done\' AND "next_step" <= ? AND "node" = ? '
                      'ORDER BY "next_step" LIMIT ?', (now, node, limit))
    return [sha256 for (sha256,) in cursor.fetchall()]


def pending_recipients(queue_id):
    """Recipients still to be delivered, in envelope order."""
    cursor = _execute('SELECT "address" FROM "recipient" WHERE "message" = ? '
                      "AND \"state\" IN ('pending', 'deferred') ORDER BY \"id\"", (queue_id,))
    return [address for (address,) in cursor.fetchall()]


def probe():
    with writing():
        _execute('INSERT INTO "probe" ("id", "time") VALUES (1, ?) '
                 'ON CONFLICT ("id") DO UPDATE SET "time" = excluded."time"', (time.time(),))


# Read at scrape time by salmon_app/metrics.py: each node reports its own messages.
def owned_by_state(node):
    """{state: (count, oldest created)} of the messages ``node`` owns."""
    cursor = _execute('SELECT "state", COUNT(*), MIN("created") FROM "message" WHERE "node" = ? AND "state" IN (%s) '
                      'GROUP BY "state"' % ", ".join("?" * len(OWNED)), (node,) + OWNED)
    return {state: (count, oldest) for state, count, oldest in cursor.fetchall()}


def stored_totals(node):
    """(records, bytes of the files still in the spool) of ``node``."""
    count, size = _execute('SELECT COUNT(*), COALESCE(SUM(CASE WHEN "has_file" THEN "size" ELSE 0 END), 0) '
                           'FROM "message" WHERE "node" = ?', (node,)).fetchone()
    return count, size


def samples_in_flight(node):
    return _execute('SELECT COUNT(*) FROM "sample" WHERE "node" = ? AND "state" != \'done\'', (node,)).fetchone()[0]


def mode_of(queue_id):
    """The message's mode (smtp, bcc, ...), also while its record waits to be written (a
    message refused or failed before its first transaction, or while storage fails)."""
    for record in list(_RECORDS):       # list(): one step under the GIL, safe while others append
        if record.queue_id == queue_id:
            return record.mode
    row = _execute('SELECT "mode" FROM "message" WHERE "id" = ?', (queue_id,)).fetchone()
    return row[0] if row else "unknown"
