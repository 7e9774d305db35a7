"""Upgrading in place: a database made by an older vxgate (without the newer columns) opens,
gains the columns with their defaults, and the mail it holds is delivered."""
import sqlite3

from salmon_app import models
from salmon_app.models import Message

from test_relay import body, wait_state


def test_old_database_gains_new_columns_and_its_mail_moves_on(vxgate, sink, tmp_path):
    gw = vxgate()
    sink.stop()
    gw.send("a@x.test", ["b@x.test"], body(7))
    row = wait_state(Message.mode == "smtp", "deferred")[0]
    gw.stop()
    models.db.close()
    # the shape of the table before parked_from and the probe table existed
    con = sqlite3.connect(str(tmp_path / "quarantine.db"))
    con.execute('ALTER TABLE "message" DROP COLUMN "parked_from"')
    con.execute('DROP TABLE "probe"')
    con.commit()
    con.close()
    sink.start()
    vxgate()
    delivered = wait_state(Message.id == row.id, "delivered", timeout=15)[0]
    assert delivered.parked_from == "" and [m.data for m in sink.wait_for(1, 5)] == [body(7)]
