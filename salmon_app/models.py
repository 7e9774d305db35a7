"""Quarantine metadata in SQLite through peewee: messages, their recipients and their history.

The database (WAL) is shared by the daemon's threads and by ``vxgate`` commands run beside it.
Writes go through ``writing()``: one in-process lock plus ``BEGIN IMMEDIATE``, so a transaction
that reads then writes never fails with "database is locked", and threads queue on a Python
lock instead of SQLite's sleeping busy handler (which costs milliseconds per collision).
"""
import contextlib
import json
import os
import sqlite3
import threading
import time

import peewee

db = peewee.DatabaseProxy()
_WRITE_LOCK = threading.RLock()

# Life of a message. Final states never change again except by an administrator's command.
STORED, CHECKING, ANALYSING, RELAYING, DEFERRED = "stored", "checking", "analysing", "relaying", "deferred"
DELIVERED, QUARANTINED, REJECTED, DISCARDED, TEMPFAILED, FAILED, DROPPED, HELD = (
    "delivered", "quarantined", "rejected", "discarded", "tempfailed", "failed", "dropped", "held")
REPORTED, CLOSED = "reported", "closed"     # BCC copies: a report was sent / nothing to report
PARKED = "parked"      # put on hold by an administrator (vxgate queue hold); goes on when released
IN_FLIGHT = (STORED, CHECKING, ANALYSING, RELAYING, DEFERRED)
FINAL = (DELIVERED, QUARANTINED, REJECTED, DISCARDED, TEMPFAILED, FAILED, DROPPED, HELD, REPORTED, CLOSED)
OWNED = IN_FLIGHT + (PARKED,)       # not finished: never expired or deleted without --force


class BaseModel(peewee.Model):
    class Meta:
        database = db


class Message(BaseModel):
    id = peewee.CharField(primary_key=True)          # the queue id, unguessable
    mode = peewee.CharField(index=True)               # smtp, bcc, notice, report
    state = peewee.CharField(index=True)
    answered = peewee.BooleanField(default=False)     # 250 sent: we own it, Postfix forgot it
    created = peewee.FloatField(index=True)
    updated = peewee.FloatField()
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
    next_attempt = peewee.FloatField(default=0)
    recoveries = peewee.IntegerField(default=0)
    next_hop_id = peewee.TextField(default="")
    last_reply = peewee.TextField(default="")
    parent = peewee.CharField(null=True, index=True)  # a notice's or report's subject message
    has_file = peewee.BooleanField(default=True)
    parked_from = peewee.CharField(default="")        # the state a parked message goes back to

    @property
    def rcpt_to(self):
        return json.loads(self.rcpt_json)

    @property
    def client(self):
        cached = self.__dict__.get("_client")
        if cached is None or cached[0] is not self.client_json:
            cached = self.__dict__["_client"] = (self.client_json, json.loads(self.client_json))
        return cached[1]

    @property
    def params(self):
        return json.loads(self.params_json)


class Recipient(BaseModel):
    message = peewee.CharField(index=True)
    address = peewee.TextField()
    state = peewee.CharField(default="pending")       # pending, delivered, deferred, bounced
    reply = peewee.TextField(default="")


class Event(BaseModel):
    message = peewee.CharField(index=True)
    time = peewee.FloatField()
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
    created = peewee.FloatField()
    started = peewee.FloatField(default=0)
    finished = peewee.FloatField(default=0)
    next_step = peewee.FloatField(default=0, index=True)
    polls = peewee.IntegerField(default=0)
    uploaded = peewee.BooleanField(default=False)
    parent = peewee.CharField(null=True)         # the .eml sample it was split from


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


class Probe(BaseModel):
    """One row rewritten to learn whether the database can be written (salmon_app/durability.py)."""
    time = peewee.FloatField()


MODELS = [Message, Recipient, Event, Sample, FileCheck, Probe]


def open_database(path, synchronous="FULL", busy_timeout=30.0):
    """Open (creating if needed, mode 0600) and bind the database; returns the peewee database."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    database = peewee.SqliteDatabase(path, pragmas={
        "journal_mode": "wal", "synchronous": synchronous, "busy_timeout": int(busy_timeout * 1000),
        "foreign_keys": 0, "cache_size": -8000}, check_same_thread=False)
    db.initialize(database)
    with writing():
        database.create_tables(MODELS)
        _add_new_columns(database)
    return database


def _add_new_columns(database):
    """Columns a newer vxgate added to a table an older one created (an upgrade in place):
    added with their defaults, so queued mail survives the upgrade. Versioned migrations
    replace this when a change needs more than a new column."""
    from playhouse.migrate import SqliteMigrator, migrate
    migrator = SqliteMigrator(database)
    for model in MODELS:
        table = model._meta.table_name
        present = {column.name for column in database.get_columns(table)}
        missing = [field for field in model._meta.sorted_fields if field.column_name not in present]
        if missing:
            migrate(*[migrator.add_column(table, field.column_name, field) for field in missing])


_DEPTH = threading.local()


@contextlib.contextmanager
def writing():
    """A write transaction that cannot meet "database is locked" inside this process.

    Nested calls join the outer transaction. Plain BEGIN/COMMIT on peewee's autocommit
    connection: peewee's atomic() cost more CPU than the statements it wrapped."""
    with _WRITE_LOCK:
        depth = getattr(_DEPTH, "n", 0)
        _DEPTH.n = depth + 1
        try:
            if depth:
                yield
                return
            connection = db.connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield
                connection.execute("COMMIT")
            except BaseException:
                # a COMMIT that failed (disk full) may leave the transaction open: end it, or
                # every later BEGIN fails with "cannot start a transaction within a transaction"
                if connection.in_transaction:
                    try:
                        connection.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        finally:
            _DEPTH.n = depth


# The per-message statements below run several times for every message, so they are plain
# SQL built once: peewee spent a third of vxgate's CPU composing the same statements again.
_SQL = {}


def _execute(sql, params=()):
    # the sqlite3 connection itself: peewee's execute_sql adds a cursor and a log call per statement
    return db.connection().execute(sql, params)


def _update_sql(columns):
    key = ("update",) + columns
    if key not in _SQL:
        _SQL[key] = 'UPDATE "message" SET %s WHERE "id" = ?' % ", ".join('"%s" = ?' % c for c in columns)
    return _SQL[key]


_MESSAGE_DEFAULTS = None


def insert_message(values, recipients):
    """Insert a message record (missing columns take their model defaults) and its recipients."""
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
    with writing():
        _execute(_SQL[key], tuple(row.values()))
        db.connection().executemany('INSERT INTO "recipient" ("message", "address", "state", "reply") '
                                "VALUES (?, ?, 'pending', '')", [(values["id"], a) for a in recipients])
    return Message(**row)


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
            db.connection().executemany(
                'UPDATE "recipient" SET "state" = ?, "reply" = ? WHERE "message" = ? AND "address" = ? '
                "AND \"state\" IN ('pending', 'deferred')",
                [(rstate, reply, queue_id, address) for address, rstate, reply in recipients])
        if event:
            log_event(queue_id, state, event, now)


def pending_recipients(queue_id):
    """Recipients still to be delivered, in envelope order."""
    cursor = _execute('SELECT "address" FROM "recipient" WHERE "message" = ? '
                      "AND \"state\" IN ('pending', 'deferred') ORDER BY \"id\"", (queue_id,))
    return [address for (address,) in cursor.fetchall()]


def probe():
    with writing():
        _execute('INSERT OR REPLACE INTO "probe" ("id", "time") VALUES (1, ?)', (time.time(),))


# Read at scrape time by salmon_app/metrics.py.
def owned_by_state():
    """{state: (count, oldest created)} of the messages vxgate owns."""
    cursor = _execute('SELECT "state", COUNT(*), MIN("created") FROM "message" WHERE "state" IN (%s) GROUP BY "state"'
                      % ", ".join("?" * len(OWNED)), OWNED)
    return {state: (count, oldest) for state, count, oldest in cursor.fetchall()}


def stored_totals():
    """(records, bytes of the files still in the spool)."""
    count, size = _execute('SELECT COUNT(*), COALESCE(SUM(CASE WHEN "has_file" THEN "size" ELSE 0 END), 0) '
                           'FROM "message"').fetchone()
    return count, size


def samples_in_flight():
    return _execute('SELECT COUNT(*) FROM "sample" WHERE "state" != \'done\'').fetchone()[0]


def mode_of(queue_id):
    row = _execute('SELECT "mode" FROM "message" WHERE "id" = ?', (queue_id,)).fetchone()
    return row[0] if row else "unknown"
