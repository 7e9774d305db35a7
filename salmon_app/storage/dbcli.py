"""The ``vxgate db`` command: create and upgrade the schema, show a database's state, move a quarantine.

``vxgate db upgrade`` brings the database the configuration names (``DatabaseUrl``, else
``DatabasePath``) to the schema this vxgate runs on, printing each step (the daemon refuses to
start on a shared database at another version). ``vxgate db status`` shows the engine, the
location (a password is never printed), the schema version, the nodes that use the database
with their clock skew, and the messages each holds. ``vxgate db copy`` moves a single node's
SQLite quarantine into PostgreSQL (``dbcopy.py``). ``register(subparsers)`` wires the group into
the ``vxgate`` command. Errors are one line on stderr with the fix, never a traceback: exit
status 1 when the database cannot be used or a copy does not verify, 2 for a usage error.
"""
import argparse
import os
import sys
import time
import urllib.parse

import peewee

from salmon_app import config as vxconfig
from salmon_app.storage import engine, migrations, models

PROG = "vxgate db"


class Failed(Exception):
    """One line for the user (with the fix); ``status`` is the exit status."""

    def __init__(self, text, status=1):
        super().__init__(text)
        self.status = status


def _database_errors():
    errors = (peewee.PeeweeException,) + engine.storage_errors()
    if engine.psycopg is not None:
        errors += (engine.psycopg.Error,)
    return errors


def _cannot_connect(where, exc, setting):
    """A sentence: which server refused, why, and where to look."""
    reason = engine.error_text(exc, where)
    kind, _ = engine.parse(where)
    if kind == "sqlite":
        return "cannot open the database %s: %s; check %s and the directory's permissions" % (
            engine.shown(where), reason, setting)
    parts = urllib.parse.urlsplit(where)
    place = "host %s, port %s, database %s, user %s" % (
        parts.hostname or "localhost", parts.port or 5432, parts.path.strip("/"), parts.username or "(none)")
    lower = reason.lower()
    if "password authentication failed" in lower or "no password supplied" in lower:
        fix = "check the user and password in %s" % setting
    elif "no pg_hba.conf entry" in lower:
        fix = "allow this host and user in the server's pg_hba.conf (then reload PostgreSQL)"
    elif "database" in lower and "does not exist" in lower:
        fix = "create it on the server (createdb -O USER DBNAME) or correct the name in %s" % setting
    elif any(word in lower for word in ("refused", "timeout", "timed out", "translate host", "resolve", "unreachable")):
        fix = ("check the host and port in %s, that PostgreSQL runs there and listens on that address "
               "(listen_addresses in postgresql.conf)" % setting)
    else:
        fix = "check %s and the server's pg_hba.conf" % setting
    return "cannot connect to %s (%s): %s; %s" % (engine.shown(where), place, reason, fix)


def open_location(where, setting="DatabaseUrl", *, create=True):
    """Connect to ``where`` and point ``models.db`` at it; Failed with the fix when that fails."""
    try:
        kind, target = engine.parse(where)
    except engine.LocationError as exc:
        raise Failed("%s: %s" % (setting, exc), status=2) from None
    if kind == "sqlite" and not create:
        if not os.path.exists(target):
            raise Failed("no database at %s: check %s (vxgate db upgrade creates it)" % (target, setting))
    try:
        database = engine.connect(where)
        database.connect(reuse_if_open=True)
    except _database_errors() as exc:
        raise Failed(_cannot_connect(where, exc, setting)) from None
    except OSError as exc:
        raise Failed("cannot open the database %s: %s; check %s" % (engine.shown(where), exc.strerror or exc, setting))
    models.db.initialize(database)
    return database


def _load(args):
    try:
        return vxconfig.load(args.config)
    except vxconfig.ConfigError as exc:
        raise Failed(str(exc), status=2) from None


def _setting(config):
    return "DatabaseUrl" if (getattr(config, "DatabaseUrl", "") or "").strip() else "DatabasePath"


# ---------------------------------------------------------------- upgrade
def upgrade_schema(database, by, say=print):
    """Bring ``database`` (bound to models.db) to migrations.CURRENT, telling ``say`` each step."""
    location = engine.shown(database.vx_location)
    found = migrations.version(database)
    if found == migrations.CURRENT:
        say("%s: already at schema %d, the one this vxgate needs; nothing to do" % (location, found))
        return
    try:
        before, after = migrations.upgrade(database, by=by, progress=lambda text: say("applying " + text))
    except _database_errors() as exc:
        reason = engine.error_text(exc, database.vx_location)
        fix = ("; the user of the URL must own the database (as postgres: ALTER DATABASE dbname OWNER TO user)"
               if "permission denied" in reason.lower() else "")
        raise Failed("cannot upgrade %s: %s%s" % (location, reason, fix)) from None
    say("%s: schema %s -> %d (current)" % (location, "none" if before is None else before, after))


def cmd_upgrade(args):
    from salmon_app.quarantine.store import who
    config = _load(args)
    where = engine.location(config)
    database = open_location(where, _setting(config))
    try:
        upgrade_schema(database, "vxgate db upgrade (%s)" % who(), lambda text: print(text, flush=True))
    finally:
        database.close()
    return 0


# ---------------------------------------------------------------- status
def cmd_status(args):
    from salmon_app.quarantine import render
    config = _load(args)
    where = engine.location(config)
    database = open_location(where, _setting(config), create=False)
    try:
        found = migrations.version(database)
        print("engine:   %s (%s)" % (database.vx_engine, _server(database)))
        print("location: %s" % engine.shown(database.vx_location))
        print("schema:   %s" % _schema_line(found))
        if not found:
            return 1
        now = time.time()
        counts = {}
        if database.table_exists("message"):
            query = (models.Message.select(models.Message.node, models.Message.state, peewee.fn.COUNT(models.Message.id))
                     .group_by(models.Message.node, models.Message.state).tuples())
            for node, state, number in query:
                entry = counts.setdefault(node or "", [0, 0, 0])
                entry[0] += number
                entry[1] += number if state in models.OWNED else 0
                entry[2] += number if state in models.KEPT else 0
        nodes = {}
        if database.table_exists("node"):
            nodes = {row.name: row for row in models.Node.select()}
        names = sorted(set(nodes) | set(counts))
        running = _running(database, names, config)
        rows = []
        for name in names:
            node = nodes.get(name)
            total, flight, kept = counts.get(name, (0, 0, 0))
            rows.append([name or "(none)", running.get(name, "-"), render.when(node.started) if node else "-",
                         ("%s (%s ago)" % (render.when(node.seen), render.duration(now - node.seen))
                          if node and node.seen else "-"),
                         "-" if node is None or node.skew is None else "%+.2fs" % node.skew,
                         str(total), str(flight), str(kept)])
        print("nodes:    %d" % len(nodes))
        if rows:
            print("\n".join("  " + line for line in render.table(
                ["NODE", "RUNNING", "STARTED", "LAST SEEN", "SKEW", "MESSAGES", "IN FLIGHT", "KEPT"], rows,
                right=(5, 6, 7))))
        return 0 if found == migrations.CURRENT else 1
    finally:
        database.close()


def _running(database, names, config):
    """{node: "yes"/"no"}: whether a daemon runs as that node now. On PostgreSQL from the node
    locks (``nodelock``), which the server frees when a daemon dies; on SQLite from the one
    node's state lock."""
    if database.vx_engine == "sqlite":
        from salmon_app.service import lock_holder, state_lock
        holder = lock_holder(state_lock(config))
        return {name: "yes (pid %s)" % holder if holder else "no" for name in names}
    from salmon_app.storage import nodelock
    held = nodelock.held(database)
    return {name: "yes" if models.advisory_key(name) in held else "no" for name in names}


def _server(database):
    if database.vx_engine == "sqlite":
        import sqlite3
        return "SQLite %s" % sqlite3.sqlite_version
    row = database.execute_sql("SHOW server_version").fetchone()
    return "PostgreSQL %s" % row[0]


def _schema_line(found):
    current = migrations.CURRENT
    if found is None:
        return "none (no vxgate tables yet; this vxgate needs %d): run `vxgate db upgrade`" % current
    if found == current:
        return "%d (the one this vxgate needs)" % found
    if found > current:
        return "%d, newer than this vxgate knows (%d): upgrade vxgate on this node" % (found, current)
    return "%d, this vxgate needs %d: run `vxgate db upgrade`" % (found, current)


# ---------------------------------------------------------------- copy
def cmd_copy(args):
    from salmon_app.storage import dbcopy
    if args.batch < 1:
        raise Failed("--batch must be at least 1", status=2)
    config = None
    if args.spool is None or args.node is None:
        config = _load(args)
    spool = args.spool or config.SpoolDir
    node = args.node or engine.node_name(config)
    try:
        kind, source_path = engine.parse(args.source)
        target_kind, target_path = engine.parse(args.target)
    except engine.LocationError as exc:
        raise Failed(str(exc), status=2) from None
    if kind != "sqlite":
        raise Failed("--from must be a node's SQLite quarantine (sqlite:///path/to/quarantine.db)", status=2)
    if (target_kind, target_path) == (kind, source_path):
        raise Failed("--from and --to name the same database", status=2)
    _source_stopped(source_path, spool)
    try:
        source = dbcopy.Source(source_path, spool)
    except dbcopy.CopyError as exc:
        raise Failed(str(exc), exc.status) from None
    database = open_location(args.target, "--to")
    try:
        _target_ready(database, args)
        print("copying %s (node %s, spool %s) to %s" % (source_path, node, source.spool_dir,
                                                          engine.shown(args.target)), flush=True)
        copy = dbcopy.Copy(source, node, args.batch, progress=lambda text: print(text, flush=True))
        try:
            totals = copy.run()
            problems = copy.verify()
        except dbcopy.CopyError as exc:
            raise Failed(str(exc), exc.status) from None
        _summary(copy, totals)
        if problems:
            print("vxgate db copy: verification failed:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print("verified: every table's rows are at the target; %d bodies' SHA-256 match the spool files"
              % totals["verified_bodies"])
        return 0
    finally:
        source.close()
        database.close()


def _source_stopped(path, spool):
    """Refuse a source whose daemon runs: the copy would miss what it writes meanwhile, and its
    messages in flight would finish on SQLite after their copies were taken."""
    from salmon_app.service import lock_holder, state_locks
    for lock in state_locks(path, spool):
        holder = lock_holder(lock)
        if holder is not None:
            raise Failed("the vxgate using %s is running (pid %s, lock %s): stop it first (salmon stop), "
                         "then copy" % (path, holder, lock))


def _target_ready(database, args):
    found = migrations.version(database)
    if found == migrations.CURRENT:
        return
    if found is not None and found > migrations.CURRENT:
        raise Failed(migrations.newer_text(database, found))
    if args.upgrade:
        from salmon_app.quarantine.store import who
        upgrade_schema(database, "vxgate db copy (%s)" % who(), lambda text: print(text, flush=True))
        return
    raise Failed("the target %s is %s: run `vxgate db upgrade` with DatabaseUrl = %s first, or add --upgrade"
                 % (engine.shown(args.target), "empty" if found is None else "at schema %d, not %d"
                    % (found, migrations.CURRENT), engine.shown(args.target)))


def _summary(copy, totals):
    from salmon_app.quarantine import render
    seconds = totals["seconds"]
    print("copied %d messages (%d already there, %d replaced by their newer state), %d recipients, %d events, "
          "%d file checks, %d releases, %d bodies (%s), %d new samples, %d new nodes in %.1fs (%.0f messages/s)"
          % (totals["messages"], totals["skipped"], totals["replaced"], totals["recipient"], totals["event"],
             totals["filecheck"], totals["release"], totals["bodies"], render.amount(totals["body_bytes"]),
             totals["samples"], totals["nodes"], seconds,
             (totals["messages"] + totals["skipped"]) / seconds if seconds else 0))
    for queue_id, state in copy.missing_files:
        print("warning: %s (%s): its file is not in the spool; only its record was copied" % (queue_id, state))


# ---------------------------------------------------------------- parser
def register(subparsers):
    """Add ``db`` and its sub-commands to ``subparsers``; returns the new parser."""
    parser = subparsers.add_parser("db", help="create or upgrade the database schema, show its state, "
                                   "copy a SQLite quarantine into PostgreSQL",
                                   description="The database behind the quarantine (DatabaseUrl or DatabasePath).")
    sub = parser.add_subparsers(dest="db_command", metavar="COMMAND", required=True)

    def child(name, func, help_text, epilog=None):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-c", "--config", help="configuration file (default: $VXGATE_CONFIG, %s if it exists, "
                       "else config/vxgate.ini)" % vxconfig.SYSTEM_CONFIG)
        p.set_defaults(func=_runner(func, "%s %s" % (PROG, name)))
        return p

    child("upgrade", cmd_upgrade, "create the tables of the configured database or upgrade them to this "
          "vxgate's schema (run it once per release, from any one node)")
    child("status", cmd_status, "show the database engine, location, schema version, the nodes using it "
          "(last seen, clock skew) and their messages",
          "Exit status 1 when the schema is not the one this vxgate needs.")
    p = child("copy", cmd_copy, "copy a single node's SQLite quarantine (records and kept bodies) into PostgreSQL",
              "Nothing is written or deleted at the source. Stop the node first, run the copy, then\n"
              "set DatabaseUrl and start it. Interrupted, the same command resumes: messages already\n"
              "copied are skipped, half-copied batches were never committed. The copy ends with a\n"
              "verification (rows per table, SHA-256 of every body); exit status 1 lists what differs.\n\n"
              "example:\n  vxgate db copy --from sqlite:///var/lib/vxgate/quarantine.db \\\n"
              "      --to postgresql://vxgate:PASSWORD@db.example.com/vxgate")
    p.add_argument("--from", dest="source", required=True, metavar="URL",
                   help="the node's SQLite database: sqlite:///path (or a path)")
    p.add_argument("--to", dest="target", required=True, metavar="URL",
                   help="the shared database: postgresql://user:password@host[:port]/dbname")
    p.add_argument("--spool", metavar="DIR", help="the node's SpoolDir, where message files are "
                   "(default: SpoolDir of the configuration)")
    p.add_argument("--node", metavar="NAME", help="node name for records that have none "
                   "(default: NodeName of the configuration, else the host name)")
    p.add_argument("--batch", type=int, default=500, metavar="N",
                   help="messages per transaction and per progress line (default 500)")
    p.add_argument("--upgrade", action="store_true", help="create or upgrade the target's schema first")
    return parser


def _runner(func, prog):
    def run(args):
        try:
            return func(args)
        except Failed as exc:
            print("%s: %s" % (prog, exc), file=sys.stderr)
            return exc.status
        except migrations.SchemaError as exc:
            print("%s: %s" % (prog, exc), file=sys.stderr)
            return 1
        except _database_errors() as exc:
            where = getattr(getattr(models.db, "obj", None), "vx_location", "")
            print("%s: database %s: %s" % (prog, engine.shown(where) or "?", engine.error_text(exc, where)), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("%s: interrupted; what was committed stays (run the same command again to resume)" % prog,
                  file=sys.stderr)
            return 130
    return run
