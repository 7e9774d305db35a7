"""Hostile input on every page of the console: attacker text shows as text, links are checked.

Subjects, file names and addresses carry ``<script>``, ``"><img onerror>`` and CR/LF
(support/hostile.py WEB_TEXT); they come in over real SMTP and are looked at on the list,
the message page, the requests page and the recipient's pages, asserting on the DOM: the
text is there as text, and no element or event handler came out of it. Forged, expired and
other recipients' links, and requests without a CSRF token, are refused with their status.
"""
import base64
import time

import pytest

from salmon_app.web import links
from support.hostile import WEB_SENDERS, WEB_TEXT
from support.mail import EICAR, pe_image
from support.web import Dom, dom, quarantined


def word(text):
    return "=?utf-8?b?%s?=" % base64.b64encode(text.encode()).decode()


def hostile_mail(value, number):
    """A message whose Subject, From and attachment name decode to ``value`` (CR/LF included)."""
    exe = base64.encodebytes(pe_image(EICAR)).decode().replace("\n", "\r\n")
    return ("From: %s <x@x.test>\r\nTo: bob@y.test\r\nSubject: %s\r\nMessage-ID: <hostile%d@x.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n%s\r\n"
            "--b\r\nContent-Type: application/octet-stream; name=\"%s\"\r\n"
            "Content-Disposition: attachment; filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n%s"
            "--b--\r\n" % (word(value), word(value), number, base64.b64encode(value.encode()).decode(),
                           word(value + ".exe"), word(value + ".exe"), exe)).encode()


def clean(page, *values):
    """The page has no injected element or handler, and shows each value as text."""
    assert page.handlers() == []
    assert [s["attrs"].get("src") for s in page.scripts()] == ["/static/console.js"]
    assert not page.find("img")
    text = page.text
    for value in values:
        shown = value.replace("\r", "\u240d").replace("\n", "\u240a")
        spaced = " ".join(value.split())          # the record keeps a header value on one line
        dropped = "".join(c for c in value if c.isprintable())     # extraction drops controls from names
        assert any(form in text for form in (value, shown, spaced, dropped)), (value, text[:2000])


@pytest.fixture
def hostile(console):
    rows = []
    for number, value in enumerate(WEB_TEXT):
        rows.append((value, quarantined(console.gw, None, data=hostile_mail(value, number))))
    return rows


def test_hostile_text_shows_as_text_on_every_page(console, hostile):
    client = console.client()
    listing = dom(client.get("/?per=200"))
    clean(listing, *WEB_TEXT)
    for value, row in hostile:
        page = dom(client.get("/message/%s" % row.id))
        clean(page, value, value + ".exe")      # the MIME part's name, whole
        # the text part, decoded, shown as text in a <pre>, never as markup
        assert any(value.replace("\r\n", "\n") in p["text"] or value in p["text"] for p in page.find("pre"))
    token = links.make(console.config, "bob@y.test")
    mine = dom(client.get("/r/%s" % token))
    clean(mine, *WEB_TEXT)
    for value, row in hostile:
        # the analysed file's name is its last path component ("<script>alert(1)</" is a folder)
        clean(dom(client.get("/r/%s/m/%s" % (token, row.id))), value, value.rsplit("/", 1)[-1] + ".exe")
        client.post("/r/%s/m/%s/release" % (token, row.id), page="/r/%s/m/%s" % (token, row.id))
    clean(dom(client.get("/requests")), *WEB_TEXT)
    flashed = dom(client.get("/?since=not%3Cscript%3E"))
    clean(flashed)


def test_hostile_envelope_senders(console):
    client = console.client()
    for number, sender in enumerate(WEB_SENDERS):
        data = ("From: x@x.test\r\nTo: bob@y.test\r\nSubject: quarantine me %d\r\nMessage-ID: <s%d@x.test>\r\n\r\nhi\r\n"
                % (number, number)).encode()
        row = quarantined(console.gw, None, sender=sender, data=data)
        assert row.mail_from == sender
        local = sender.rsplit("@", 1)[0]
        for url in ("/?per=200", "/message/%s" % row.id):
            page = dom(client.get(url))
            clean(page)
            assert local in page.text or local.replace('\\"', '"') in page.text


def test_forged_expired_and_other_recipients_links(console, monkeypatch):
    bob = quarantined(console.gw, "quarantine me bob", to=["bob@y.test"])
    carol = quarantined(console.gw, "quarantine me carol", to=["carol@y.test"])
    client = console.client(login=False)
    token = links.make(console.config, "carol@y.test")
    assert client.get("/r/%s" % token).status_code == 200
    assert "quarantine me bob" not in dom(client.get("/r/%s" % token)).text
    # carol's link does not open bob's message, nor release it
    assert client.get("/r/%s/m/%s" % (token, bob.id)).status_code == 404
    page = "/r/%s/m/%s" % (token, carol.id)          # a page of carol's with a form (and its token)
    assert client.post("/r/%s/m/%s/release" % (token, bob.id), page=page).status_code == 404
    # forged: altered, or signed with another key
    assert client.get("/r/%s" % (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))).status_code == 403
    other = links.make(console.config.replace(WebSecret="another key"), "bob@y.test")
    assert client.get("/r/%s" % other).status_code == 403
    assert client.get("/r/not-a-token").status_code == 403
    # expired: made longer ago than DigestLinkLifetime
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - console.config.DigestLinkLifetime - 60)
    old = links.make(console.config, "bob@y.test")
    monkeypatch.setattr(time, "time", real)
    expired = client.get("/r/%s" % old)
    assert expired.status_code == 410 and "expired" in dom(expired).text
    # a recipient's form without the CSRF token
    mine = client.get("/r/%s" % links.make(console.config, "bob@y.test"))
    assert mine.status_code == 200
    assert client.http.post("/r/%s/m/%s/release" % (links.make(console.config, "bob@y.test"), bob.id)).status_code == 400


def test_dom_helper_sees_injected_elements():
    page = Dom('<p>a</p><img src=x onerror="alert(1)"><script>alert(2)</script>')
    assert page.handlers() == [("img", "onerror")] and page.find("img") and len(page.scripts()) == 1
