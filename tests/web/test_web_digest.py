"""Recipients' self-service: the digest, the release a verdict allows, requests refused or approved.

Digests go out through the daemon's own path (Gateway.inject, then the relay) to the sink;
each lists a recipient's newly quarantined mail once, with a link that opens their mail
only. RecipientRelease decides per verdict: suspicious mail a recipient releases to
themselves alone; dangerous mail they may only ask for, and an administrator answers.
"""
import base64
import email
import re

from salmon_app.storage.models import Event, Message
from salmon_app.quarantine import history
from salmon_app.web import digest, links
from support.hostile import WEB_TEXT
from support.mail import EICAR, pe_image
from support.web import dom, quarantined, wait_until


def mails_to(sink, address, marker):
    return [m for m in sink.messages if m.rcpt_tos == [address] and marker in m.data]


def text_of(message):
    return email.message_from_bytes(message.data).get_payload(decode=True).decode()


def test_digest_hook_lists_each_message_once_per_recipient(console):
    gw = console.gw
    crlf = "=?utf-8?b?%s?=" % base64.b64encode(("quarantine me " + WEB_TEXT[2]).encode()).decode()
    first = quarantined(gw, None, to=["bob@y.test", "carol@y.test"], data=(
        "From: x@x.test\r\nTo: bob@y.test\r\nSubject: %s\r\nMessage-ID: <crlf@x.test>\r\n\r\nhi\r\n" % crlf).encode())
    config = gw.gateway.config.replace(QuarantineDigest="Hourly", WebSecret=console.config.WebSecret,
                                       WebBaseUrl="https://gateway.example:8425/")
    now = [1000.0]
    hook = digest.digest_hook(lambda: config, gw.gateway.inject, clock=lambda: now[0])
    hook()
    bob = wait_until(lambda: mails_to(console.sink, "bob@y.test", b"Quarantine digest"), what="bob's digest")
    wait_until(lambda: mails_to(console.sink, "carol@y.test", b"Quarantine digest"), what="carol's digest")
    body = text_of(bob[0])
    assert "Invoice Bcc: x@attacker.test" in body and "\nBcc:" not in body     # attacker text on one line
    link = re.search(r"https://gateway\.example:8425/r/(\S+)", body).group(1)
    assert links.read(console.config, link) == "bob@y.test"
    assert Event.select().where(Event.message == first.id, Event.kind == "digest").count() == 2
    lines = history.render_show(history.describe(console.app.config["STORE"], first.id))
    assert any("listed in the digest" in line and "bob@y.test" in line for line in lines)

    second = quarantined(gw, "quarantine me later", to=["bob@y.test"])
    now[0] += 1800
    hook()                                  # not due yet: half an hour
    now[0] += 1801
    hook()
    later = wait_until(lambda: [m for m in mails_to(console.sink, "bob@y.test", b"Quarantine digest") if m is not bob[0]],
                       what="the next digest")
    assert "quarantine me later" in text_of(later[0]) and "Invoice" not in text_of(later[0])
    assert len(mails_to(console.sink, "carol@y.test", b"Quarantine digest")) == 1     # nothing new for carol
    assert Event.select().where(Event.message == second.id, Event.kind == "digest").count() == 1
    off = config.replace(QuarantineDigest="Off")
    digest.digest_hook(lambda: off, gw.gateway.inject, clock=lambda: 0.0)()      # off: nothing sent
    assert len(mails_to(console.sink, "bob@y.test", b"Quarantine digest")) == 2


def test_recipient_releases_suspicious_mail_to_themselves_only(console):
    held = quarantined(console.gw, "Macro document", [("notes.exe", pe_image(b"VXGATE-TEST-SUSPICIOUS"))],
                       to=["bob@y.test", "carol@y.test"])
    assert held.verdict == "suspicious"
    stored = console.gw.gateway.spool.read(held.id)
    client = console.client(login=False)
    token = links.make(console.config, "bob@y.test")
    page = "/r/%s/m/%s" % (token, held.id)
    assert "Release it to me" in dom(client.get(page)).text
    assert client.post(page + "/release", page=page).status_code == 302
    arrived = wait_until(lambda: [m for m in console.sink.messages if m.data == stored], what="bob's copy")
    assert [m.rcpt_tos for m in arrived] == [["bob@y.test"]]
    assert "released" in dom(client.get(page)).find("dd", id="status")[0]["text"]
    event = Event.get(Event.message == held.id, Event.kind == "released")
    assert "by recipient bob@y.test (web)" in event.text and "to bob@y.test (instead of" in event.text
    # carol may still release her own copy; bob's page offers nothing more
    carol = "/r/%s/m/%s" % (links.make(console.config, "carol@y.test"), held.id)
    client.post(carol + "/release", page=carol)
    wait_until(lambda: [m for m in console.sink.messages if m.data == stored and m.rcpt_tos == ["carol@y.test"]],
               what="carol's copy")
    assert not dom(client.get(page)).find("button", id="act")


def test_request_refused_tells_the_recipient_and_releases_nothing(console):
    held = quarantined(console.gw, "Invoice EICAR", [("invoice.exe", pe_image(EICAR))], to=["bob@y.test"])
    stored = console.gw.gateway.spool.read(held.id)
    recipient = console.client(login=False)
    page = "/r/%s/m/%s" % (links.make(console.config, "bob@y.test"), held.id)
    assert "Ask for its release" in dom(recipient.get(page)).text
    token = dom(recipient.get(page)).csrf()
    for _ in range(2):                                 # twice: still one request
        assert recipient.http.post(page + "/release", data={"csrf_token": token}).status_code == 302
    assert "request pending" in dom(recipient.get(page)).find("dd", id="status")[0]["text"]
    admin = console.client()
    requests = dom(admin.get("/requests"))
    forms = [f["attrs"]["action"] for f in requests.find("form") if f["attrs"]["action"].endswith("/refuse")]
    assert len(forms) == 1
    assert "1" in requests.find("b", class_="count")[0]["text"]
    assert admin.post(forms[0], page="/requests").status_code == 302
    assert admin.post(forms[0], page="/requests").status_code == 409        # answered already
    told = wait_until(lambda: mails_to(console.sink, "bob@y.test", b"Release request refused"), what="bob told")
    assert "refused by an administrator" in text_of(told[0]) and "Invoice EICAR" in text_of(told[0])
    assert not [m for m in console.sink.messages if m.data == stored]
    assert "request refused" in dom(recipient.get(page)).find("dd", id="status")[0]["text"]
    kinds = [e.kind for e in Event.select().where(Event.message == held.id).order_by(Event.id)]
    assert kinds.count("release-requested") == 1 and "release-refused" in kinds
    assert Message.get_by_id(held.id).state == "quarantined"


def test_recipient_right_none_is_refused(console):
    held = quarantined(console.gw, "Invoice EICAR", [("invoice.exe", pe_image(EICAR))], to=["bob@y.test"])
    client = console.client(login=False)
    page = "/r/%s/m/%s" % (links.make(console.config, "bob@y.test"), held.id)
    token = dom(client.get(page)).csrf()
    console.app.config["VXGATE"] = console.config.replace(RecipientRelease=["dangerous:none"])
    assert "Only an administrator" in dom(client.get(page)).text
    assert client.http.post(page + "/release", data={"csrf_token": token}).status_code == 403
