"""Recipients' release requests: what a recipient asked for, and the administrator's answer.

A request is a row of our own table (``web_release_request``; models.py is the daemon's):
message, recipient, state (``pending``, ``approved``, ``refused``; ``released`` when the recipient
released their copy themselves), when, and who decided.
Asking twice while one is pending is one request. Every step is also an Event in the
message's history, so ``vxgate quarantine show`` tells the whole story.
"""
import time

import peewee

from salmon_app.storage import models
from salmon_app.storage.models import BaseModel, Message
from salmon_app.quarantine.store import record


class ReleaseRequest(BaseModel):
    message = peewee.CharField(index=True)
    recipient = peewee.TextField()
    state = peewee.CharField(default="pending", index=True)
    time = peewee.FloatField()
    decided = peewee.FloatField(default=0)
    decided_by = peewee.TextField(default="")

    class Meta:
        table_name = "web_release_request"


def create_table():
    database = models.db.obj
    if not database.table_exists(ReleaseRequest._meta.table_name):
        with models.writing():
            database.create_tables([ReleaseRequest])


def ask(queue_id, recipient, user):
    """A pending request of ``recipient`` for ``queue_id``; returns (request, created)."""
    with models.writing():
        existing = ReleaseRequest.get_or_none(ReleaseRequest.message == queue_id, ReleaseRequest.recipient == recipient,
                                              ReleaseRequest.state == "pending")
        if existing is not None:
            return existing, False
        request = ReleaseRequest.create(message=queue_id, recipient=recipient, time=time.time())
        record(queue_id, "release-requested", user, "asks for its release to %s" % recipient)
    return request, True


def _live():
    return ReleaseRequest.message.in_(Message.select(Message.id))


def pending():
    """[(request, message)] waiting for an administrator, oldest first."""
    rows = list(ReleaseRequest.select().where(ReleaseRequest.state == "pending", _live()).order_by(ReleaseRequest.time))
    messages = {m.id: m for m in Message.select().where(Message.id.in_([r.message for r in rows]))} if rows else {}
    return [(r, messages[r.message]) for r in rows if r.message in messages]


def pending_count():
    return ReleaseRequest.select().where(ReleaseRequest.state == "pending", _live()).count()


def for_message(queue_id):
    return list(ReleaseRequest.select().where(ReleaseRequest.message == queue_id).order_by(ReleaseRequest.time))


def for_recipient(recipient):
    """{queue id: latest request} of one recipient."""
    found = {}
    for r in ReleaseRequest.select().where(ReleaseRequest.recipient == recipient).order_by(ReleaseRequest.time):
        found[r.message] = r
    return found


def note_release(queue_id, recipient, user):
    """A recipient released their own copy (RecipientRelease = release): kept as a request answered
    at once, so their page says "released" whatever later releases of the message do."""
    with models.writing():
        ReleaseRequest.create(message=queue_id, recipient=recipient, state="released", time=time.time(),
                              decided=time.time(), decided_by=user)


def decide(request_id, approve, user, note=""):
    """Mark a pending request approved or refused; returns it (None when it was not pending)."""
    state = "approved" if approve else "refused"
    with models.writing():
        request = ReleaseRequest.get_or_none(ReleaseRequest.id == request_id, ReleaseRequest.state == "pending")
        if request is None:
            return None
        ReleaseRequest.update(state=state, decided=time.time(), decided_by=user).where(
            ReleaseRequest.id == request_id).execute()
        record(request.message, "release-" + state, user, "the request of %s%s" % (request.recipient,
                                                                               ": " + note if note else ""))
    request.state = state
    return request
