"""Every route of the console with Flask's test client, on a database filled through real SMTP.

A gateway runs with the vxCube emulator and a hook that quarantines what vxCube finds
dangerous or suspicious (EICAR is dangerous); the console reads the same database. Assertions
are on the page's DOM and on what reaches the next hop (the sink), as a user would check.
"""
import os
import stat

import pytest

from salmon_app.storage.models import Event, Message
from salmon_app.quarantine import history
from support.mail import EICAR, mail_with, pe_image
from support.web import dom, quarantined, wait_until


def test_login_required_and_login_logout(console):
    anonymous = console.client(login=False)
    page = anonymous.get("/")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=")
    assert anonymous.get("/message/0123456789ABCDEF").status_code == 302
    assert anonymous.post("/bulk", {"action": "delete", "id": "0123456789ABCDEF"}, page="/login").status_code == 401
    client = console.client()
    listing = client.get("/")
    assert listing.status_code == 200 and "admin" in dom(listing).find("span", class_="who")[0]["text"]
    out = client.post("/logout")
    assert out.status_code == 302 and client.get("/").status_code == 302


def test_users_file_is_private_and_holds_only_hashes(console):
    mode = stat.S_IMODE(os.stat(console.config.WebUsersFile).st_mode)
    assert mode == 0o600
    text = open(console.config.WebUsersFile).read()
    assert "admin:$argon2id$" in text and "battery" not in text


@pytest.mark.both_engines          # one console for every node of a shared PostgreSQL database
def test_list_search_and_paging(console):
    gw = console.gw
    held = quarantined(gw, "Invoice EICAR", [("invoice.exe", pe_image(EICAR))], sender="mallory@evil.test",
                       to=["bob@y.test"])
    other = quarantined(gw, "quarantine me please", sender="carol@ok.test", to=["dave@z.test"])
    client = console.client()
    page = dom(client.get("/"))
    rows = page.find("tr")
    ids = [e["attrs"]["value"] for e in page.find("input", name="id")]
    assert set(ids) >= {held.id, other.id}
    assert "Invoice EICAR" in page.text and "dangerous" in page.text

    def ids_for(query):
        response = client.get("/?" + query)
        assert response.status_code == 200, response.get_data(as_text=True)
        return {e["attrs"]["value"] for e in dom(response).find("input", name="id")}
    assert ids_for("sender=evil.test") == {held.id}
    assert ids_for("recipient=dave@") == {other.id}
    assert ids_for("message_id=" + held.message_id.strip("<>")[:8]) == {held.id}
    assert ids_for("queue_id=" + held.id[:6].lower()) == {held.id}
    assert ids_for("verdict=dangerous&state=quarantined") == {held.id}
    assert ids_for("since=1h&until=now") >= {held.id, other.id}
    assert ids_for("until=2000-01-01") == set()
    assert ids_for("released=yes") == set()
    assert ids_for("sort=sender&per=25") >= {held.id, other.id}
    assert client.get("/?page=99999999999999999999999").status_code == 200
    assert client.get("/?page=x&per=7").status_code == 200
    bad = client.get("/?since=someday")
    assert bad.status_code == 400 and "bad time" in dom(bad).text
    assert rows


def test_message_page_shows_everything(console):
    held = quarantined(console.gw, "Invoice EICAR", [("invoice.exe", pe_image(EICAR))])
    page = dom(console.client().get("/message/%s" % held.id))
    text = page.text
    for expected in ("invoice.exe", "dangerous", "vxCube: dangerous", "MAIL FROM", "mallory@x.test", "bob@y.test",
                     "History", "received", "quarantined", "Please see the attached files."):
        assert expected in text, expected
    info = history.describe(console.app.config["STORE"], held.id)
    assert info["files"][0]["sha256"] in text
    assert any("report" == a["text"] for a in page.find("a"))       # the vxCube task report link
    assert console.client().get("/message/%s" % held.id.lower()).status_code == 200
    assert console.client().get("/message/FFFFFFFFFFFFFFFF").status_code == 404
    assert console.client().get("/message/not-an-id").status_code == 404


@pytest.mark.both_engines          # one console for every node of a shared PostgreSQL database
def test_release_to_original_recipients_is_byte_identical_and_recorded(console):
    held = quarantined(console.gw, "Invoice EICAR", [("invoice.exe", pe_image(EICAR))], to=["bob@y.test", "carol@y.test"])
    stored = console.gw.gateway.spool.read(held.id)
    client = console.client()
    page = "/message/%s" % held.id
    response = client.post(page + "/release", {"target": "original"}, page=page)
    assert response.status_code == 302
    [arrived] = console.sink.wait_for(1, 20)
    assert arrived.data == stored and arrived.rcpt_tos == ["bob@y.test", "carol@y.test"]
    shown = dom(client.get(page))
    assert "released" in shown.find("span", id="released")[0]["text"]
    assert "released to bob@y.test, carol@y.test" in shown.text          # the flashed outcome
    event = Event.get(Event.message == held.id, Event.kind == "released")
    assert "by admin (web console)" in event.text
    # a second release only says when it was released
    client.post(page + "/release", {"target": "original"}, page=page)
    assert "already released" in dom(client.get(page)).text
    # to another address, forced
    client.post(page + "/release", {"target": "other", "to": "analyst@z.test", "force": "1"}, page=page)
    second = console.sink.wait_for(2, 20)[1]
    assert second.rcpt_tos == ["analyst@z.test"] and second.data == stored
    bad = client.post(page + "/release", {"target": "other", "to": "not an address"}, page=page)
    assert bad.status_code == 400


def test_export_downloads_the_original_as_an_attachment(console):
    held = quarantined(console.gw, "Invoice EICAR", [("invoice.exe", pe_image(EICAR))])
    response = console.client().get("/message/%s.eml" % held.id)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == "attachment; filename=%s.eml" % held.id
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.data == console.gw.gateway.spool.read(held.id)
    assert "by admin (web console)" in Event.get(Event.message == held.id, Event.kind == "exported").text


@pytest.mark.both_engines          # one console for every node of a shared PostgreSQL database
def test_delete_and_bulk_actions(console):
    gw = console.gw
    rows = [quarantined(gw, "quarantine me %d" % i, sender="s%d@x.test" % i) for i in range(3)]
    client = console.client()
    response = client.post("/bulk", {"action": "release", "id": [rows[0].id, rows[1].id], "target": "original"})
    assert response.status_code == 302
    assert len(console.sink.wait_for(2, 20)) == 2
    listing = dom(client.get("/?released=yes"))
    assert {e["attrs"]["value"] for e in listing.find("input", name="id")} == {rows[0].id, rows[1].id}
    client.post("/bulk", {"action": "delete", "id": [rows[1].id, rows[2].id]})
    assert Message.get_or_none(Message.id == rows[2].id) is None and not gw.gateway.spool.exists(rows[2].id)
    client.post("/message/%s/delete" % rows[0].id, {})
    assert Message.get_or_none(Message.id == rows[0].id) is None
    assert client.post("/bulk", {"action": "explode", "id": [rows[0].id]}).status_code == 400


def test_security_headers_and_cookie(console):
    client = console.client(login=False)
    response = client.get("/login")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    login = client.login()
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/static/console.js").status_code == 200
    assert all(s["attrs"].get("src", "").startswith("/static/") for s in dom(client.get("/")).scripts())


def test_missing_csrf_token_and_wrong_passwords(console):
    client = console.client()
    held = quarantined(console.gw, "quarantine me csrf")
    forged = client.http.post("/message/%s/release" % held.id, data={"target": "original"})
    assert forged.status_code == 400 and "CSRF" in dom(forged).text
    wrong = client.http.post("/message/%s/delete" % held.id, data={"csrf_token": "forged"})
    assert wrong.status_code == 400 and Message.get_or_none(Message.id == held.id) is not None
    attacker = console.client(login=False)
    codes = [attacker.login(password="guess %d" % i).status_code for i in range(10)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    assert attacker.login().status_code == 429          # even the right password waits out the limit
    assert client.get("/").status_code == 200           # a session already open is not touched


def test_open_redirect_after_login_is_refused(console):
    for target in ("//evil.test/x", "/\\evil.test/x", "https://evil.test/", "/\tevil"):
        client = console.client(login=False)
        token = dom(client.get("/login")).csrf()
        response = client.http.post("/login", data={"username": "admin", "password": "correct horse battery staple",
                                                    "csrf_token": token, "next": target})
        assert response.status_code == 302 and response.headers["Location"] == "/", target


def test_show_in_cli_lists_web_actions(console):
    held = quarantined(console.gw, "quarantine me cli")
    console.client().get("/message/%s.eml" % held.id)
    lines = history.render_show(history.describe(console.app.config["STORE"], held.id))
    assert any("exported" in line and "by admin (web console)" in line for line in lines)
    wait_until(lambda: True)
