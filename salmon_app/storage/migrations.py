"""Versioned schema: what ``vxgate db upgrade`` applies, and what the daemon checks at start-up.

The table ``vxgate_schema`` holds one row: the schema version the database is at. Each entry of
``STEPS`` brings a database from the version before it to its own, inside one transaction where
the engine allows. Version 1 is the schema of the first release that counted versions: it creates
what is missing and adds, with their defaults, the columns an older vxgate did not have (an
unversioned SQLite file from before counts as version 0). A daemon meets a database at another
version and refuses to start, naming the command to run; a single node's SQLite file is upgraded
in place at start-up instead, since nobody else uses it.
"""
import logging
import time

import peewee

LOG = logging.getLogger("vxgate.storage")


class SchemaError(Exception):
    """The database's schema is not the one this vxgate runs on; the text names the fix."""


class SchemaVersion(peewee.Model):
    id = peewee.IntegerField(primary_key=True)
    version = peewee.IntegerField()
    updated = peewee.DoubleField()
    by = peewee.TextField(default="")

    class Meta:
        table_name = "vxgate_schema"


def _step_1(database):
    """Create every table and index; add the columns an older, unversioned vxgate lacked."""
    from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate
    from salmon_app.storage.models import MODELS as models
    existing = set(database.get_tables())
    # tables that exist get their missing columns before any index: SQLite would index a
    # missing column's quoted name as a string constant
    database.create_tables([m for m in models if m._meta.table_name not in existing], safe=True)
    migrator = (SqliteMigrator if database.vx_engine == "sqlite" else PostgresqlMigrator)(database)
    for model in models:
        table = model._meta.table_name
        present = {column.name for column in database.get_columns(table)}
        missing = [field for field in model._meta.sorted_fields if field.column_name not in present]
        if missing:
            migrate(*[migrator.add_column(table, field.column_name, field) for field in missing])
    # create_tables(safe=True) skips the indexes of a table that already existed
    for model in models:
        model._schema.create_indexes(safe=True)
    database.execute_sql('CREATE INDEX IF NOT EXISTS "message_node_state" ON "message" ("node", "state")')
    database.execute_sql('CREATE INDEX IF NOT EXISTS "message_sha256" ON "message" ("sha256")')


STEPS = {1: ("tables, node names, kept bodies and the node list", _step_1)}
CURRENT = max(STEPS)


def version(database):
    """The schema version: None for an empty database, 0 for vxgate tables without a version."""
    if database.table_exists(SchemaVersion._meta.table_name):
        with database.bind_ctx([SchemaVersion]):
            row = SchemaVersion.get_or_none(SchemaVersion.id == 1)
        if row is not None:
            return row.version
    return 0 if database.table_exists("message") else None


def upgrade(database, by="", progress=None):
    """Apply the steps this database lacks; returns (before, after). ``progress(text)`` hears each."""
    from salmon_app.storage import models
    before = version(database)
    current = before or 0
    if current > CURRENT:
        raise SchemaError(newer_text(database, current))
    lock = _upgrade_lock(database)
    try:
        for number in sorted(n for n in STEPS if n > current):
            what, step = STEPS[number]
            if progress:
                progress("schema %d: %s" % (number, what))
            with models.writing():
                with database.bind_ctx([SchemaVersion]):
                    database.create_tables([SchemaVersion], safe=True)
                    step(database)
                    (SchemaVersion.insert(id=1, version=number, updated=time.time(), by=by)
                     .on_conflict(conflict_target=[SchemaVersion.id],
                                  update={SchemaVersion.version: number, SchemaVersion.updated: time.time(),
                                          SchemaVersion.by: by}).execute())
            current = number
    finally:
        _upgrade_unlock(database, lock)
    return before, current


def check(database, *, upgrade=False):
    """Raise SchemaError unless the schema is CURRENT (bringing it there first when ``upgrade``)."""
    from salmon_app.storage import engine
    found = version(database)
    if found == CURRENT:
        return
    if found is not None and found > CURRENT:
        raise SchemaError(newer_text(database, found))
    if upgrade:
        before, after = globals()["upgrade"](database, by="start-up")
        if before is not None:
            LOG.warning("database %s upgraded from schema %d to %d", engine.shown(database.vx_location), before, after)
        return
    if found is None:
        raise SchemaError("the database %s has no vxgate tables yet: run `vxgate db upgrade` to create them"
                          % engine.shown(database.vx_location))
    raise SchemaError("the database %s is at schema %d and this vxgate needs %d: run `vxgate db upgrade` "
                      "(every node must run the new vxgate)" % (engine.shown(database.vx_location), found, CURRENT))


def newer_text(database, found):
    from salmon_app.storage import engine
    return ("the database %s is at schema %d, newer than this vxgate knows (%d): upgrade vxgate on this node"
            % (engine.shown(database.vx_location), found, CURRENT))


# Two nodes upgrading at once would both create the same tables: one waits for the other.
_LOCK_KEY = 0x76786761    # "vxga"


def _upgrade_lock(database):
    if database.vx_engine == "sqlite":
        return None
    database.execute_sql("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    return _LOCK_KEY


def _upgrade_unlock(database, key):
    if key is not None:
        try:
            database.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))
        except peewee.PeeweeException:
            pass
