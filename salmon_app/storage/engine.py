"""The database engine behind the records: SQLite (one node, the default) or PostgreSQL (shared).

``location(config)`` says which database a configuration names: ``DatabaseUrl``
(``postgresql://…`` or ``sqlite:///…``) when set, else the SQLite file ``DatabasePath``.
``connect()`` opens it through peewee; on PostgreSQL through psycopg 3, whose statements are
prepared by the server after a few runs, from a pool (an SMTP session is a thread of its own:
it borrows a connection and gives it back when it ends, instead of paying for a log-in per
connection), and whose broken connections (the server restarted) are dropped so the next
statement reconnects instead of failing for ever. ``shown()`` is the
location fit for a log line or an error: a URL's password is never printed.
"""
import os
import urllib.parse

import peewee
from playhouse.pool import PooledDatabase, PooledPostgresqlDatabase, PooledSqliteDatabase

try:    # only the PostgreSQL engine needs it
    import psycopg
except ImportError:     # pragma: no cover - psycopg is a dependency
    psycopg = None

SCHEMES = ("postgresql", "postgres", "sqlite")


class LocationError(ValueError):
    pass


def location(config):
    """The database the configuration names: a URL, or the absolute path of the SQLite file."""
    url = (getattr(config, "DatabaseUrl", "") or "").strip()
    if url:
        return url
    return os.path.abspath(config.DatabasePath)


def node_name(config):
    """``NodeName``, or this host's name."""
    import socket
    return getattr(config, "NodeName", "") or socket.gethostname()


def is_url(text):
    return "://" in text


def parse(text):
    """(engine, target): ("sqlite", absolute path) or ("postgresql", URL); LocationError if neither."""
    if not is_url(text):
        return "sqlite", os.path.abspath(text)
    scheme = text.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise LocationError("unknown database URL scheme %r: use postgresql://user:password@host/dbname "
                            "or sqlite:///path/to/quarantine.db" % scheme)
    if scheme == "sqlite":
        path = urllib.parse.unquote(text.partition("://")[2])
        if not path.strip("/"):
            raise LocationError("sqlite:/// needs a file path, as in sqlite:///var/lib/vxgate/quarantine.db")
        # sqlite:///x and sqlite:////x name the same absolute path
        return "sqlite", os.path.abspath("/" + path.lstrip("/") if path.startswith("/") else path)
    parts = urllib.parse.urlsplit(text)
    if not parts.path.strip("/"):
        raise LocationError("the database URL names no database: postgresql://user:password@host/dbname")
    return "postgresql", "postgresql://" + text.partition("://")[2]


def shown(text):
    """``text`` with any password replaced by ``***`` (for logs, errors and doctor)."""
    if not is_url(text):
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc="%s:***@%s" % (user, netloc[2])))


def password(text):
    """The password of a database URL ("" if none): a secret for the log's redaction filter."""
    if not is_url(text):
        return ""
    try:
        return urllib.parse.unquote(urllib.parse.urlsplit(text).password or "")
    except ValueError:
        return ""


class Postgres(PooledPostgresqlDatabase):
    """peewee's pooled PostgreSQL database whose broken connections are replaced on next use."""

    def connection(self):
        conn = self._state.conn
        if conn is not None and not self._state.closed and (conn.broken or conn.closed):
            self.close()      # the pool sees it cannot be reused and closes it
        return super().connection()


def release():
    """Give this thread's connection back to the pool (the end of an SMTP session)."""
    from salmon_app.storage.models import db
    database = db.obj
    if isinstance(database, PooledDatabase):
        try:
            database.close()
        except peewee.PeeweeException:
            pass


def connect(text, *, synchronous="FULL", busy_timeout=30.0, connect_timeout=10, pooled=False):
    """The peewee database for ``text`` (a path or a URL), not yet bound to the models.

    ``pooled`` (the daemon): SQLite connections are pooled too, since a new one (opening the
    file, its pragmas, reading the schema) costs half a millisecond of CPU, which an SMTP
    session of one message, a thread of its own, would otherwise pay for every message."""
    engine, target = parse(text)
    if engine == "sqlite":
        directory = os.path.dirname(target)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
        kind, pool = (PooledSqliteDatabase, {"max_connections": 0}) if pooled else (peewee.SqliteDatabase, {})
        # wal_autocheckpoint: the index pages every message changes are copied from the WAL to
        # the file once per checkpoint; at 10,000 pages (a WAL of up to 40 MB) ten times less
        # often than SQLite's 1,000: 2-3% less CPU per message at 4 KB (bench/README.md)
        database = kind(target, **pool, pragmas={
            "journal_mode": "wal", "synchronous": synchronous, "busy_timeout": int(busy_timeout * 1000),
            "foreign_keys": 0, "cache_size": -8000, "wal_autocheckpoint": 10000}, check_same_thread=False)
    else:
        if psycopg is None:
            raise LocationError("DatabaseUrl names PostgreSQL but psycopg is not installed (pip install psycopg)")
        # lock_timeout plays SQLite's busy_timeout; a server that is down fails the connection
        # quickly, so new mail gets 451 instead of waiting on a dead socket
        database = Postgres(target, max_connections=0, stale_timeout=600, prefer_psycopg3=True,
                            connect_timeout=connect_timeout,
                            options="-c lock_timeout=%d" % int(busy_timeout * 1000),
                            application_name="vxgate")
    database.vx_engine, database.vx_location = engine, text if is_url(text) else target
    return database


def error_text(exc, where):
    """The first line of a driver's error about ``where``, with the URL's password as ``***``."""
    text = " ".join(str(exc).split("\n")[0].split()) or exc.__class__.__name__
    secret = password(where)
    return text.replace(secret, "***") if secret else text


def server_time(database):
    """The database server's clock (epoch seconds) on PostgreSQL; None on SQLite (no server)."""
    if database.vx_engine == "sqlite":
        return None
    return float(database.execute_sql("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])


def is_conflict(exc):
    """A transaction PostgreSQL rolled back to settle a conflict with another one (a deadlock,
    a serialisation failure): that write failed once, the database itself works."""
    if psycopg is None:
        return False
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, psycopg.Error):      # the driver's own error decides, not what it interrupted
            return (exc.sqlstate or "").startswith("40")      # class 40: transaction rollback
        # peewee wraps the driver's error: the original is its first argument and its context
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = inner or exc.__cause__ or exc.__context__
    return False


def storage_errors():
    """Exception classes that mean "the database cannot be reached or written", per driver."""
    found = [peewee.OperationalError, peewee.InterfaceError]
    import sqlite3
    found.append(sqlite3.OperationalError)
    if psycopg is not None:
        found += [psycopg.OperationalError, psycopg.InterfaceError]
    return tuple(found)
