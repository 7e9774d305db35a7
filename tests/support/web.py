"""Helpers for the web console tests: a console on a live gateway, a logged-in client, the DOM.

``Console`` wraps a gateway started by the ``vxgate`` fixture (real SMTP in, the vxCube
emulator, the sink as next hop) and the Flask app on the same database. ``Dom`` parses a
page with the standard library's HTML parser into elements and their text, so tests assert
on what a browser would build (an injected ``<img>`` would be an element), not on the source.
"""
import html.parser
import re

from salmon_app.storage.models import Message
from support.mail import mail_with
from support.waiting import wait_until  # noqa: F401  (tests import it from here too)

PASSWORD = "correct horse battery staple"
SECRET = "web-test-secret-0123456789abcdef"
# the EICAR/emulator path: vxCube's verdict decides; dangerous and suspicious mail is held
HOOK = """
function smtp_hook(ctx)
  if ctx.vxcube.verdict == "dangerous" or ctx.vxcube.verdict == "suspicious" then
    return {action = "quarantine", message = "vxCube: " .. ctx.vxcube.verdict}
  end
  if string.find(ctx.message.header.value("Subject") or "", "quarantine me", 1, true) then
    return {action = "quarantine", message = "held for review"}
  end
  return {action = "accept"}
end
"""


class Dom(html.parser.HTMLParser):
    """Elements (tag, attrs, text) of a page; ``text`` is what a reader sees."""

    VOID = {"input", "br", "img", "meta", "link", "hr"}

    def __init__(self, source):
        super().__init__(convert_charrefs=True)
        self.elements, self._open, self.chunks = [], [], []
        self.feed(source)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": []}
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        self.chunks.append(data)
        for element in self._open:
            element["text"].append(data)

    @property
    def text(self):
        return "".join(self.chunks)

    def find(self, tag, **attrs):
        return [dict(e, text="".join(e["text"])) for e in self.elements if e["tag"] == tag
                and all(e["attrs"].get(k.rstrip("_")) == v for k, v in attrs.items())]

    def csrf(self):
        return self.find("input", name="csrf_token")[0]["attrs"]["value"]

    def scripts(self):
        return [e for e in self.elements if e["tag"] == "script"]

    def handlers(self):
        """Event-handler attributes anywhere (onerror=, onclick=...): injected code."""
        return [(e["tag"], k) for e in self.elements for k in e["attrs"] if k.lower().startswith("on")]


def dom(response):
    return Dom(response.get_data(as_text=True))


def quarantined(gw, subject, files=(), sender="mallory@x.test", to=("bob@y.test",), data=None):
    """Send a message over SMTP and wait until vxgate has quarantined it; returns its record."""
    data = data or mail_with(list(files), subject=subject, sender=sender)
    gw.send(sender, list(to), data)
    message_id = re.search(rb"(?im)^Message-ID: *(<[^>]*>)", data).group(1).decode()

    def done():
        row = Message.get_or_none(Message.message_id == message_id)
        return row if row is not None and row.state == "quarantined" else None
    return wait_until(done, what="%r quarantined" % subject)


class Client:
    """A Flask test client that logs in and posts forms with their CSRF token."""

    def __init__(self, app):
        self.http = app.test_client()

    def get(self, url, **kw):
        return self.http.get(url, **kw)

    def login(self, name="admin", password=PASSWORD):
        token = dom(self.http.get("/login")).csrf()
        return self.http.post("/login", data={"username": name, "password": password, "csrf_token": token})

    def post(self, url, data=None, page=None):
        """POST ``data`` with the CSRF token of ``page`` (default: the list page)."""
        token = dom(self.http.get(page or "/")).csrf()
        return self.http.post(url, data=dict(data or {}, csrf_token=token))
