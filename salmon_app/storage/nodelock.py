"""One running vxgate per NodeName on a shared database.

Two daemons with one node name (a copied VM keeps its host name, the default NodeName) would
each take the other's messages for their own: recovery drops the records of sessions the
other is still answering, and both resume and relay its acknowledged mail, twice. At start-up,
before recovery, the daemon therefore takes a PostgreSQL session advisory lock on its node
name, on a connection of its own held for the life of the process; the server frees it when
that process or connection ends, so a node killed with -9 starts again at once. A second
daemon with the same name stops with the fix named. SQLite serves one node, whose state lock
(``config/boot.py``) already keeps a second daemon out.
"""
import time

from salmon_app.storage import engine
from salmon_app.storage.models import advisory_key

WAIT = 5            # seconds a name held by another connection is waited for
_CLASS = 0x5658     # "VX": the first key of the two-key form, apart from models.exclusive()'s one-key locks


class NodeInUse(RuntimeError):
    """Another running vxgate holds this node name."""


def claim(database, node):
    """Hold ``node`` for this process: the connection that holds it (close it to let go), or
    None on SQLite. Raises NodeInUse when another daemon holds it."""
    if database.vx_engine == "sqlite":
        return None
    import psycopg
    connection = database._connect()      # not from the pool: it lives as long as the daemon
    try:
        connection.autocommit = True
        # the server must notice a node whose host died (no FIN ever comes) within a minute,
        # not after the system's two-hour TCP keepalive, or the name stays taken
        connection.execute("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                           "SET tcp_keepalives_count = 3")
        # a daemon restarted right after a crash may find its name still held for a moment,
        # until the server has seen the old connection close
        connection.execute("SET lock_timeout = '%ds'" % WAIT)
        try:
            connection.execute("SELECT pg_advisory_lock(%s, %s)", (_CLASS, advisory_key(node)))
            connection.execute("RESET lock_timeout")
            return connection
        except psycopg.errors.LockNotAvailable:
            pass
        row = connection.execute('SELECT "seen", "version" FROM "node" WHERE "name" = %s', (node,)).fetchone()
    except BaseException:
        connection.close()
        raise
    connection.close()
    seen = ""
    if row and row[0]:
        seen = " (it was last seen %ds ago%s)" % (max(0, time.time() - row[0]),
                                                  ", vxgate %s" % row[1] if row[1] else "")
    raise NodeInUse("another running vxgate is node %r on %s%s; give this one its own NodeName in [Root] "
                    "(the default is the host name, which a copied machine keeps); if that node's machine "
                    "died, the server frees the name within a minute"
                    % (node, engine.shown(database.vx_location), seen))


def release(connection):
    if connection is not None:
        try:
            connection.close()
        except Exception:
            pass        # the server frees the lock with the session anyway


def held(database):
    """The keys (``advisory_key`` of a name) of the node names running daemons hold now."""
    rows = database.execute_sql(
        "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objsubid = 2 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())", (_CLASS,))
    # pg_locks shows the int4 key as an unsigned oid
    return {int(objid) - 2 ** 32 if int(objid) >= 2 ** 31 else int(objid) for objid, in rows}
