"""Moving one node's SQLite quarantine into a shared database (``vxgate db copy``): records and bodies.

The SQLite file is read through its own read-only sqlite3 connection (nothing is ever written
or deleted there), while the peewee proxy ``models.db`` points at the target, so the models and
``models.writing()`` write where the copy goes. Messages go over in batches of ``batch``, one
transaction each, every message with its recipients, history, file checks, release marker and,
when its file is in the spool, its bytes (table ``body``: every node can then show, export and
release it). The child tables have automatic ids, so a message is copied as a whole: at the
target it is absent (inserted), identical with the same number of child rows (skipped), or the
same message in an older state (its rows are deleted and inserted again in that transaction):
an interrupted run, run again, neither duplicates nor loses a row. A row with the same id but
another message (received at another time, other bytes or another node) stops the copy. The
verdict cache (``sample``) and the node list are shared: rows already there are kept. At the
end the counts per table and the SHA-256 of every copied body are compared with the source.
Columns an older vxgate did not have take their defaults, so an old file needs no upgrade.
"""
import hashlib
import os
import sqlite3
import time
import urllib.parse

import peewee

from salmon_app.storage import models
from salmon_app.storage.models import Body, Event, FileCheck, Message, Node, Recipient, Release, Sample

CHILDREN = (Recipient, Event, FileCheck)        # automatic ids: copied per message, in source order
IDENTITY = ("created", "sha256", "mode", "mail_from", "node")    # what makes two rows one message


class CopyError(Exception):
    """The copy cannot go on (one line, with the fix); ``status`` is the exit status."""

    def __init__(self, text, status=1):
        super().__init__(text)
        self.status = status


class Source:
    """The SQLite quarantine being moved, read-only."""

    def __init__(self, path, spool_dir):
        if not os.path.isfile(path):
            raise CopyError("no SQLite database at %s (--from)" % path, status=2)
        uri = "file:%s?mode=ro" % urllib.parse.quote(path)
        try:
            self.con = sqlite3.connect(uri, uri=True)
            tables = {name for (name,) in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise CopyError("cannot read %s: %s" % (path, exc)) from None
        if "message" not in tables:
            raise CopyError("%s is not a vxgate quarantine (it has no message table)" % path, status=2)
        self.path, self.tables = path, tables
        self.spool_dir = os.path.abspath(spool_dir)
        if not os.path.isdir(self.spool_dir):
            raise CopyError("no spool directory %s: give the node's SpoolDir with --spool" % self.spool_dir, status=2)
        self.columns = {model: self._columns(model) for model in models.MODELS}

    def _columns(self, model):
        """The model's fields the source table has (without the child tables' own ids)."""
        table = model._meta.table_name
        if table not in self.tables:
            return []
        present = {row[1] for row in self.con.execute('PRAGMA table_info("%s")' % table)}
        return [f for f in model._meta.sorted_fields if f.column_name in present
                and not (model in CHILDREN and f.name == "id")]

    def rows(self, model, where="", params=(), order=None):
        """Rows of ``model`` as {field name: value}, every field of the model filled in."""
        fields = self.columns[model]
        if not fields:
            return []
        sql = 'SELECT %s FROM "%s"%s' % (", ".join('"%s"' % f.column_name for f in fields),
                                         model._meta.table_name, " WHERE " + where if where else "")
        if order:
            sql += " ORDER BY " + order
        defaults = _defaults(model)
        return [dict(defaults, **{f.name: value for f, value in zip(fields, row)})
                for row in self.con.execute(sql, params)]

    def messages_after(self, last, limit):
        return self.rows(Message, '"id" > ?', (last, ), order='"id" LIMIT %d' % limit)

    def children(self, model, ids):
        """{message id: [rows]} of a child table, in the source's order."""
        found = {}
        for row in self.rows(model, '"message" IN (%s)' % ",".join("?" * len(ids)), ids,
                             order='"id"' if model in CHILDREN else None):
            found.setdefault(row["message"], []).append(row)
        return found

    def count(self, table, where=""):
        if table not in self.tables:
            return 0
        return self.con.execute('SELECT COUNT(*) FROM "%s"%s' % (table, " WHERE " + where if where else "")).fetchone()[0]

    def file(self, queue_id):
        """The bytes of the message's spool file, or None."""
        if not (queue_id.isalnum() and queue_id.isascii() and 8 <= len(queue_id) <= 32):
            return None
        try:
            with open(os.path.join(self.spool_dir, queue_id[:2], queue_id + ".eml"), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def close(self):
        self.con.close()


def _defaults(model):
    out = {}
    for field in model._meta.sorted_fields:
        default = field.default() if callable(field.default) else field.default
        out[field.name] = default
    return out


def _normal(model, row):
    """A row's values as the target would give them back (booleans, floats), for comparing."""
    return tuple(f.python_value(f.db_value(row[f.name])) for f in model._meta.sorted_fields
                 if not (model in CHILDREN and f.name == "id"))


class Copy:
    """One run of ``vxgate db copy``; ``run()`` copies, ``verify()`` compares, both return summaries."""

    def __init__(self, source, node, batch=500, progress=print):
        self.source, self.node, self.batch, self.progress = source, node, max(1, batch), progress
        self.totals = dict.fromkeys(("messages", "skipped", "replaced", "recipient", "event", "filecheck",
                                     "release", "bodies", "body_bytes", "samples", "nodes"), 0)
        self.missing_files = []       # (queue id, state): has_file, but no file in the spool

    # ---------------------------------------------------------------- copying
    def run(self):
        started = time.monotonic()
        total = self.source.count("message")
        self._check_spool()
        last = ""
        done = 0
        while True:
            batch = self.source.messages_after(last, self.batch)
            if not batch:
                break
            for row in batch:
                if not row["node"]:
                    row["node"] = self.node
            self._copy_batch(batch)
            last = batch[-1]["id"]
            done += len(batch)
            self.progress("copied %d of %d messages (%d already there), %d bodies, %.1fs"
                          % (done, total, self.totals["skipped"], self.totals["bodies"], time.monotonic() - started))
        self._copy_shared()
        self.totals["seconds"] = time.monotonic() - started
        return self.totals

    def _check_spool(self):
        """A wrong --spool would copy every record without its body: stop before that."""
        with_files = self.source.rows(Message, '"has_file"', order='"id" LIMIT 20')
        if with_files and not any(self.source.file(row["id"]) is not None for row in with_files):
            raise CopyError("none of the first %d messages with a file has it in %s: give the node's SpoolDir "
                            "with --spool" % (len(with_files), self.source.spool_dir), status=2)

    def _copy_batch(self, batch):
        ids = [row["id"] for row in batch]
        children = {model: self.source.children(model, ids) for model in CHILDREN}
        releases = {row["message"]: row for rows in self.source.children(Release, ids).values() for row in rows}
        with models.writing():
            existing = {tuple_[0]: tuple_ for tuple_ in Message.select().where(Message.id.in_(ids)).tuples()}
            counts = self._target_counts(ids) if existing else {}
            released = ({r[0]: r for r in Release.select().where(Release.message.in_(ids)).tuples()}
                        if existing else {})
            bodied = (set(b for (b,) in Body.select(Body.message).where(Body.message.in_(ids)).tuples())
                      if existing else set())
            fresh = []
            for row in batch:
                data = self.source.file(row["id"]) if row["has_file"] else None
                if row["has_file"] and data is None and row["state"] in models.KEPT:
                    self.missing_files.append((row["id"], row["state"]))
                there = existing.get(row["id"])
                if there is not None:
                    self._same_message(row, there)
                    mine = _normal(Message, row)
                    kids = tuple(len(children[m].get(row["id"], ())) for m in CHILDREN)
                    release = releases.get(row["id"])
                    if (mine == there and kids == tuple(counts.get((m, row["id"]), 0) for m in CHILDREN)
                            and (release and _normal(Release, release)) == (released.get(row["id"]) or None)
                            and (data is not None) == (row["id"] in bodied)):
                        self.totals["skipped"] += 1
                        continue
                    self.totals["replaced"] += 1
                fresh.append((row, data))
            if not fresh:
                return
            redo = [row["id"] for row, _ in fresh if row["id"] in existing]
            if redo:
                for model in CHILDREN + (Release, Body):
                    model.delete().where(model.message.in_(redo)).execute()
                Message.delete().where(Message.id.in_(redo)).execute()
            self._insert(Message, [row for row, _ in fresh])
            for model in CHILDREN:
                rows = [kid for row, _ in fresh for kid in children[model].get(row["id"], ())]
                self._insert(model, rows)
                self.totals[model._meta.table_name] += len(rows)
            rows = [releases[row["id"]] for row, _ in fresh if row["id"] in releases]
            self._insert(Release, rows)
            self.totals["release"] += len(rows)
            now = time.time()
            bodies = [dict(message=row["id"], data=data, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                           stored=now) for row, data in fresh if data is not None]
            for start in range(0, len(bodies), 20):       # a few MB per statement at most
                self._insert(Body, bodies[start:start + 20])
            self.totals["bodies"] += len(bodies)
            self.totals["body_bytes"] += sum(b["size"] for b in bodies)
            self.totals["messages"] += len(fresh)

    def _same_message(self, row, there):
        names = [f.name for f in Message._meta.sorted_fields]
        mine = dict(zip(names, _normal(Message, row)))
        theirs = dict(zip(names, there))
        differs = [name for name in IDENTITY if mine[name] != theirs[name]]
        if differs:
            raise CopyError("%s: the target already holds another message with this id (its %s differ%s: node %r); "
                            "nothing was overwritten and the copy stopped (were --from or --node different in an "
                            "earlier run?)" % (row["id"], ", ".join(differs), "s" if len(differs) == 1 else "",
                                               theirs["node"]))

    def _target_counts(self, ids):
        counts = {}
        for model in CHILDREN:
            query = (model.select(model.message, peewee.fn.COUNT(model.id))
                     .where(model.message.in_(ids)).group_by(model.message).tuples())
            for message, number in query:
                counts[(model, message)] = number
        return counts

    def _insert(self, model, rows):
        if not rows:
            return
        fields = [f for f in model._meta.sorted_fields if not (model in CHILDREN and f.name == "id")]
        for start in range(0, len(rows), 200):
            chunk = rows[start:start + 200]
            model.insert_many([tuple(r[f.name] for f in fields) for r in chunk], fields=fields).execute()

    def _copy_shared(self):
        """The verdict cache and the node list: rows another node already wrote are kept."""
        for model, key in ((Sample, "samples"), (Node, "nodes")):
            rows = self.source.rows(model)
            if model is Sample:
                for row in rows:
                    row["node"] = row["node"] or self.node
            fields = model._meta.sorted_fields
            for start in range(0, len(rows), 200):
                chunk = rows[start:start + 200]
                with models.writing():
                    before = model.select().count()
                    (model.insert_many([tuple(r[f.name] for f in fields) for r in chunk], fields=fields)
                     .on_conflict_ignore().execute())
                    self.totals[key] += model.select().count() - before

    # ---------------------------------------------------------------- verifying
    def verify(self):
        """Differences between the source and the target (empty when the copy is complete)."""
        problems = []
        ids = [i for (i,) in self.source.con.execute('SELECT "id" FROM "message" ORDER BY "id"')]
        owned = '"message" IN (SELECT "id" FROM "message")'
        expected = {"message": len(ids)}
        for model in CHILDREN + (Release,):
            expected[model._meta.table_name] = self.source.count(model._meta.table_name, owned)
        found = dict.fromkeys(expected, 0)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found["message"] += Message.select().where(Message.id.in_(chunk)).count()
            for model in CHILDREN + (Release,):
                found[model._meta.table_name] += model.select().where(model.message.in_(chunk)).count()
        for table in expected:
            if expected[table] != found[table]:
                problems.append("%s: %d rows at the source, %d at the target" % (table, expected[table], found[table]))
        for model, key in ((Sample, "sha256"), (Node, "name")):
            keys = [row[key] for row in self.source.rows(model)]
            there = 0
            field = getattr(model, key)
            for start in range(0, len(keys), 500):
                there += model.select().where(field.in_(keys[start:start + 500])).count()
            if there != len(keys):
                problems.append("%s: %d of the source's %d rows are missing at the target"
                                % (model._meta.table_name, len(keys) - there, len(keys)))
        problems += self._verify_bodies()
        return problems

    def _verify_bodies(self):
        problems, checked = [], 0
        wanted = self.source.rows(Message, '"has_file"', order='"id"')
        for start in range(0, len(wanted), 50):
            chunk = {row["id"]: row for row in wanted[start:start + 50]}
            there = {m: bytes(d) for m, d in Body.select(Body.message, Body.data)
                     .where(Body.message.in_(list(chunk))).tuples()}
            for queue_id, row in chunk.items():
                data = self.source.file(queue_id)
                if data is None:
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if queue_id not in there:
                    problems.append("%s: body missing at the target" % queue_id)
                elif hashlib.sha256(there[queue_id]).hexdigest() != digest:
                    problems.append("%s: the body at the target differs from %s" % (
                        queue_id, os.path.join(self.source.spool_dir, queue_id[:2], queue_id + ".eml")))
                elif row["sha256"] and row["sha256"] != digest:
                    problems.append("%s: the spool file's SHA-256 is not the one recorded when it was received "
                                    "(changed or damaged at the source)" % queue_id)
                else:
                    checked += 1
        self.totals["verified_bodies"] = checked
        return problems
