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
import logging
import time

from salmon_app.storage import engine
from salmon_app.storage.models import advisory_key

LOG = logging.getLogger("vxgate.storage")
WAIT = 5            # seconds a name held by another connection is waited for
_CLASS = 0x5658     # "VX": the first key of the two-key form, apart from models.exclusive()'s one-key locks


class NodeInUse(RuntimeError):
    """Another running vxgate holds this node name."""


class Claim:
    """This process's hold on its node name (nothing to hold on SQLite)."""

    def __init__(self, database, node):
        self.database, self.node, self.connection = database, node, None
        if database.vx_engine != "sqlite":
            self._take(WAIT)

    def _take(self, wait):
        """Hold the name on a new connection of its own; NodeInUse when another daemon holds it."""
        import psycopg
        connection = self.database._connect()      # not from the pool: it lives as long as the daemon
        try:
            connection.autocommit = True
            # the server must notice a node whose host died (no FIN ever comes) within a minute,
            # not after the system's two-hour TCP keepalive, or the name stays taken
            connection.execute("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                               "SET tcp_keepalives_count = 3")
            # a daemon restarted right after a crash may find its name still held for a moment,
            # until the server has seen the old connection close
            connection.execute("SET lock_timeout = '%dms'" % max(1, wait * 1000))
            try:
                connection.execute("SELECT pg_advisory_lock(%s, %s)", (_CLASS, advisory_key(self.node)))
                connection.execute("RESET lock_timeout")
                self.connection = connection
                return
            except psycopg.errors.LockNotAvailable:
                pass
            row = connection.execute('SELECT "seen", "version" FROM "node" WHERE "name" = %s',
                                     (self.node,)).fetchone()
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
                        % (self.node, engine.shown(self.database.vx_location), seen))

    def keep(self):
        """Now and then (the heartbeat): a database server that restarted forgot the name; take it again."""
        if self.database.vx_engine == "sqlite":
            return
        if self.connection is not None:
            try:
                self.connection.execute("SELECT 1")
                return
            except Exception:   # noqa: BLE001 - gone with the server: taken again below
                self.release()
        try:
            self._take(0)
            LOG.info("node name %r held again after the database connection was lost", self.node)
        except NodeInUse as exc:
            LOG.error("while the database was away %s; two daemons now run as this node: stop one", exc)
        except Exception:   # noqa: BLE001 - the server is still away: the next heartbeat tries again
            pass

    def release(self):
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:   # noqa: BLE001
                pass        # the server frees the lock with the session anyway


def held(database):
    """The keys (``advisory_key`` of a name) of the node names running daemons hold now."""
    rows = database.execute_sql(
        "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objsubid = 2 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())", (_CLASS,))
    # pg_locks shows the int4 key as an unsigned oid
    return {int(objid) - 2 ** 32 if int(objid) >= 2 ** 31 else int(objid) for objid, in rows}
