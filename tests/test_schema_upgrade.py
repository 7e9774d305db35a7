"""Upgrading in place: a SQLite database made by an older vxgate (before schema versions, without
the newer columns and tables) opens, is brought to the current schema, and the mail it holds is
delivered."""
import sqlite3

from salmon_app.storage import models
from salmon_app.storage.models import Message

from test_relay import body, wait_state


def test_old_database_gains_new_columns_and_its_mail_moves_on(vxgate, sink, tmp_path):
    gw = vxgate()
    sink.stop()
    gw.send("a@x.test", ["b@x.test"], body(7))
    row = wait_state(Message.mode == "smtp", "deferred")[0]
    gw.stop()
    models.db.close()
    # the shape of the database before parked_from, node names, the probe and schema versions
    con = sqlite3.connect(str(tmp_path / "quarantine.db"))
    con.execute('DROP INDEX "message_node"')
    con.execute('DROP INDEX "message_node_state"')
    for column in ("parked_from", "node"):
        con.execute('ALTER TABLE "message" DROP COLUMN "%s"' % column)
    for table in ("probe", "body", "node", "vxgate_schema"):
        con.execute('DROP TABLE "%s"' % table)
    con.commit()
    con.close()
    sink.start()
    again = vxgate()
    delivered = wait_state(Message.id == row.id, "delivered", timeout=15)[0]
    assert delivered.parked_from == "" and delivered.node == again.gateway.node and [m.data for m in sink.wait_for(1, 5)] == [body(7)]
