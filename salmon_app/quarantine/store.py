"""Opening the quarantine (database and spool) for a command, and reading a message's bytes.

``Store(config)`` binds the database named by ``DatabaseUrl`` or ``DatabasePath`` (refusing to
create a SQLite file where none exists: a wrong path in a command must not invent an empty
quarantine) and the spool of ``SpoolDir``; when this process already has that database open
(the daemon calling ``expire()``), it is reused instead of re-bound. A message's file is in
the spool of the node that received it (``NodeName``); with a shared database the bytes of a
kept message are also in the database, so ``open_message()`` serves any node's message. ``Release`` (storage/models.py) is one row
per released message with who, when, to whom and the next hop's reply; a row in state
``sending`` is a claim that makes concurrent releases of one message impossible. ``lookup()`` turns user input into a record or a clear "not found" error.
"""
import getpass
import io
import json
import os
import re

import peewee

from salmon_app.storage import engine, migrations, subnodes

from salmon_app.storage import models
from salmon_app.storage.models import Message, Release
from salmon_app.storage.spool import Spool

QUEUE_ID_RE = re.compile(r"^[A-Z0-9]{8,32}$")


class QuarantineError(Exception):
    """A failure to report as one line; ``status`` is the exit status (1: not found / failed)."""

    def __init__(self, text, status=1):
        super().__init__(text)
        self.status = status


CLAIM_STALE = 600.0     # a "sending" claim older than this was left by a crashed command


def who():
    """The Unix user running the command (and the real one behind sudo)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "uid %d" % os.getuid()
    sudo = os.environ.get("SUDO_USER")
    if sudo and sudo != user:
        user = "%s (sudo from %s)" % (user, sudo)
    return user


def bind_database(where):
    """(database, opened): this process's open database if it is ``where``, else ``where`` opened now.

    Never re-binds a process already using another database (that would pull it from under the
    daemon's threads)."""
    current = models.db.obj
    if current is not None:
        if getattr(current, "vx_location", None) != where:
            raise QuarantineError("this process already uses the database %s, not %s"
                                  % (engine.shown(getattr(current, "vx_location", current.database)), engine.shown(where)))
        database, opened = current, False
    else:
        database, opened = models.open_database(where, upgrade=False), True
    return database, opened


class Store:
    def __init__(self, config, *, must_exist=True):
        self.config = config
        self.node = engine.node_name(config)
        where = engine.location(config)
        kind, path = engine.parse(where)
        if kind == "sqlite" and must_exist and not os.path.exists(path):
            raise QuarantineError("no quarantine database at %s (check DatabasePath in %s)"
                                  % (path, config.path or "the configuration"))
        try:
            self.database, self._opened = bind_database(where)
        except migrations.SchemaError as exc:
            raise QuarantineError(str(exc)) from None
        except (peewee.PeeweeException, engine.storage_errors()) as exc:
            raise QuarantineError("cannot open the database %s: %s"
                                  % (engine.shown(where), engine.error_text(exc, where))) from None
        try:
            self.spool = Spool(config.SpoolDir)
        except OSError as exc:
            raise QuarantineError("cannot use the spool %s: %s" % (config.SpoolDir, exc)) from None

    def close(self):
        """Close the database if this store opened it (a daemon's own stays open)."""
        if self._opened and not self.database.is_closed():
            self.database.close()

    def lookup(self, queue_id):
        """The Message of ``queue_id`` (any case), or QuarantineError "not found"."""
        try:
            queue_id = normalise_id(queue_id)
        except ValueError as exc:
            raise QuarantineError(str(exc), status=2) from None
        row = Message.get_or_none(Message.id == queue_id)
        if row is None:
            raise QuarantineError("%s: no such message" % queue_id)
        return row

    def file_path(self, queue_id):
        """The message file: in this node's spool, or in the spool of one of its processes
        (``Processes``: ``SpoolDir/proc-N``); the path it would have here when it is in neither."""
        path = self.spool.path(queue_id)
        if os.path.exists(path):
            return path
        for folder in subnodes.process_dirs(self.spool.directory, 1).values():
            there = os.path.join(folder, os.path.relpath(path, self.spool.directory))
            if os.path.exists(there):
                return there
        return path

    def open_message(self, row):
        """A binary file of ``row``'s bytes: this node's spool file, else the copy in the database."""
        if self.local(row):
            try:
                return open(self.file_path(row.id), "rb")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise QuarantineError("%s: cannot read its file: %s" % (row.id, exc.strerror or exc)) from None
        data = models.kept_body(row.id)
        if data is None:
            raise QuarantineError(self.file_problem(row, "read") or "%s: its file is gone" % row.id)
        return io.BytesIO(data)

    def modified_path(self, queue_id):
        """The modified copy a policy may have written beside the original (``<id>.out``)."""
        return self.file_path(queue_id)[:-4] + ".out"

    def local(self, row):
        """True when this node's spool (or one of its processes') holds ``row``'s file."""
        return row.node in (self.node, "") or row.node.startswith(self.node + "/")

    def file_problem(self, row, verb):
        """Why ``row`` has no file to ``verb`` (a sentence), or None when its file is there."""
        if not row.has_file:
            hint = (" (delivered mail is not kept unless KeepDeliveredMessages = Yes)"
                    if row.state == models.DELIVERED else "")
            return "%s: no stored file to %s: only its record is left%s" % (row.id, verb, hint)
        if not self.local(row):
            if models.has_kept_body(row.id):
                return None
            return ("%s: its file is in the spool of node %s and not in the database (only quarantined "
                    "and held messages are); run the command on %s" % (row.id, row.node, row.node))
        if not os.path.exists(self.file_path(row.id)):
            if models.has_kept_body(row.id):
                return None
            return ("%s: its file %s is missing from the spool; nothing to %s "
                    "(vxgate quarantine check --repair records that)" % (row.id, self.file_path(row.id), verb))
        return None

    def released(self, ids):
        """Release rows by message id for ``ids`` (completed releases only)."""
        found = {}
        ids = list(ids)
        for start in range(0, len(ids), 500):
            for rel in Release.select().where(Release.message.in_(ids[start:start + 500]),
                                              Release.state == "done"):
                found[rel.message] = rel
        return found


def record(queue_id, kind, user, text=""):
    """An administrator's action in the message's history (an Event): who, when and what."""
    with models.writing():
        models.log_event(queue_id, kind, "by %s%s" % (user, ": " + text if text else ""))


def client_of(row):
    """The message's client dict (XFORWARD attributes, peer, and "_" internal keys); {} if unreadable."""
    try:
        value = json.loads(row.client_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def normalise_id(text):
    """A queue id as stored (upper case) or ValueError: ids are 16 hex digits, never guessed."""
    queue_id = str(text).strip().upper()
    if not QUEUE_ID_RE.match(queue_id):
        raise ValueError("%r is not a queue id (16 hexadecimal digits, as in the log)" % text)
    return queue_id
