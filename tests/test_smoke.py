from salmon_app.storage.models import Message


def test_relays_bytes_unchanged(vxgate, sink):
    gw = vxgate()
    data = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"
    gw.send("a@example.test", ["b@example.test", "C@Example.test"], data)
    msgs = sink.wait_for(1, 5)
    assert msgs[0].data == data
    assert msgs[0].rcpt_tos == ["b@example.test", "C@Example.test"]
    row = Message.get()
    assert row.state == "delivered"
