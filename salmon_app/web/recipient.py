"""Recipients' self-service through their signed link, and the administrators' answer to requests.

``/r/<token>`` lists the quarantined mail of the address the token was made for (links.py)
and nothing else: a message of another recipient is "not found" (404), as is a queue id that
does not exist, so a link never tells whether someone else's message is there. What the
recipient may do with a message is RecipientRelease for its verdict: ``release`` sends it
to them alone (never to the other recipients), ``request`` asks an administrator, ``none``
only shows it. Requests appear on ``/requests`` for administrators to approve (the message
is released to that recipient) or refuse; either way the recipient is told by mail.
"""
import flask
from peewee import fn

from salmon_app import config as vxconfig
from salmon_app.storage import models
from salmon_app.storage.models import Message, Recipient
from salmon_app.outbox import store_own
from salmon_app.quarantine import history, render
from salmon_app.quarantine.store import normalise_id
from salmon_app.web import admin, auth, digest, links, release_requests

bp = flask.Blueprint("recipient", __name__)


def _config():
    return flask.current_app.config["VXGATE"]


def _address(token):
    try:
        return links.read(_config(), token)
    except links.Expired as exc:
        flask.abort(410, "%s: the digest's links last %s; the next digest brings a new one, or ask your administrator"
                    % (exc, render.duration(_config().DigestLinkLifetime)))
    except links.Forged as exc:
        flask.abort(403, str(exc))


def _theirs(address):
    """The query of quarantined messages addressed to ``address``."""
    mine = Recipient.select(Recipient.message).where(fn.LOWER(Recipient.address) == address)
    return Message.select().where(Message.id.in_(mine), Message.state == models.QUARANTINED, Message.mode == "smtp")


def _message(address, queue_id):
    try:
        queue_id = normalise_id(queue_id)
    except ValueError:
        flask.abort(404)
    row = _theirs(address).where(Message.id == queue_id).first()
    if row is None:
        flask.abort(404, "no such message in your quarantine")
    return row


def _released_to(address, release, request):
    """True when ``address`` got its copy: released to it by the recipient or on their request,
    or the message's last release included it."""
    if request is not None and request.state in ("approved", "released"):
        return True
    return release is not None and address in [a.strip().lower() for a in release.recipients.split(",")]


def _status(address, row, releases, requests):
    request = requests.get(row.id)
    if _released_to(address, releases.get(row.id), request):
        return "released"
    return "request " + request.state if request is not None else ""


def _actor(address):
    return "recipient %s (web)" % address


@bp.route("/r/<token>")
def mine(token):
    address = _address(token)
    rows = list(_theirs(address).order_by(Message.created.desc()).limit(500))
    releases = admin.store().released(r.id for r in rows)
    requests = release_requests.for_recipient(address)
    rights = vxconfig.recipient_release(_config())
    return flask.render_template("mine.html", address=address, token=token, rows=rows, rights=rights,
                                 status={r.id: _status(address, r, releases, requests) for r in rows})


@bp.route("/r/<token>/m/<queue_id>")
def mine_message(token, queue_id):
    address = _address(token)
    row = _message(address, queue_id)
    info = history.describe(admin.store(), row.id)
    status = _status(address, row, admin.store().released([row.id]), release_requests.for_recipient(address))
    return flask.render_template("mine_message.html", address=address, token=token, row=row, info=info,
                                 right=vxconfig.recipient_release(_config()).get(row.verdict, "none"), status=status)


@bp.route("/r/<token>/m/<queue_id>/release", methods=["POST"])
def mine_release(token, queue_id):
    address = _address(token)
    row = _message(address, queue_id)
    right = vxconfig.recipient_release(_config()).get(row.verdict, "none")
    if right == "release":
        if _status(address, row, admin.store().released([row.id]), release_requests.for_recipient(address)) == "released":
            flask.flash("%s: already released to you" % row.id, "ok")
        else:
            lines = _release_to(row, address, _actor(address))
            admin.flash_lines(lines)
            if not any(is_error for _, is_error in lines):
                release_requests.note_release(row.id, address, _actor(address))
    elif right == "request":
        _, created = release_requests.ask(row.id, address, _actor(address))
        flask.flash("Your request was sent to the administrators." if created else
                    "Your request is already waiting for an administrator.", "ok")
    else:
        flask.abort(403, "messages with the verdict %s can only be released by an administrator" % row.verdict)
    return flask.redirect(flask.url_for("recipient.mine_message", token=token, queue_id=row.id))


def _release_to(row, address, user):
    """Release ``row`` to ``address`` alone; again (forced) only when they did not get it already."""
    previous = admin.store().released([row.id]).get(row.id)
    again = previous is not None and not _released_to(address, previous, None)
    return admin.release_many([row.id], to=[address], force=again, user=user)


# ---------------------------------------------------------------- administrators
@bp.route("/requests")
@auth.admin_required
def requests():
    return flask.render_template("requests.html", pending=release_requests.pending())


@bp.route("/requests/<int:request_id>/<answer>", methods=["POST"])
@auth.admin_required
def answer(request_id, answer):
    if answer not in ("approve", "refuse"):
        flask.abort(404)
    request = release_requests.ReleaseRequest.get_or_none(release_requests.ReleaseRequest.id == request_id)
    if request is None or request.state != "pending":
        flask.abort(409, "this request was answered already")
    row = admin.store().lookup(request.message)
    approve = answer == "approve"
    if approve:
        lines = _release_to(row, request.recipient, auth.actor())
        admin.flash_lines(lines)
        if any(is_error for _, is_error in lines):
            return flask.redirect(flask.url_for("recipient.requests"))
    if release_requests.decide(request_id, approve, auth.actor()) is None:
        flask.abort(409, "this request was answered already")
    _tell(request.recipient, row, approve)
    flask.flash("%s: the request of %s was %s" % (row.id, request.recipient, "approved" if approve else "refused"), "ok")
    return flask.redirect(flask.url_for("recipient.requests"))


def _tell(recipient, row, approved):
    config = _config()
    link = links.url(config, recipient) if config.WebSecret and config.WebBaseUrl else ""
    data = digest.outcome_note(config, recipient, row, approved, link)
    store_own(admin.store().spool, "notice", "", [recipient], data, parent=row.id, node=admin.store().node,
              subject="release request %s" % ("approved" if approved else "refused"))
