"""The administrators' pages: the list with the CLI's filters, a message's page, and its actions.

Each view is a thin layer over salmon_app/quarantine: ``query.Filters``/``query.listing`` for
the list (server-side paging with LIMIT/OFFSET on indexed columns), ``history.describe`` for
a message, ``release.release``, ``export.open_original`` and ``remove.remove_messages`` for the
actions, so the console and ``vxgate quarantine`` cannot disagree. Every action is recorded
under the administrator's name (``auth.actor()``): releases by release.py itself, exports in
the message's history, deletions in the log (the history goes with the message). Forms POST
with a CSRF token and answer with a redirect (no re-sent form on reload); what happened is
flashed on the next page.
"""
import flask

from salmon_app import config as vxconfig
from salmon_app.quarantine import export, history, query, release, remove, render
from salmon_app.quarantine.store import QuarantineError, normalise_id, record
from salmon_app.web import auth, body, release_requests

bp = flask.Blueprint("admin", __name__)
PAGE_SIZES = (25, 50, 100, 200)
TEXT_FILTERS = ("sender", "recipient", "subject", "message_id", "queue_id")


def store():
    return flask.current_app.config["STORE"]


def shown(text, keep_lines=False):
    """Text with its invisible characters made visible (CR, LF, NUL, bidi overrides...): a
    subject's CRLF must show on the page as the attacker wrote it, not vanish into white space.
    ``keep_lines`` keeps line feeds and tabs (a text part in a <pre>)."""
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if char.isprintable() or (keep_lines and char in "\n\t"):
            out.append(char)
        elif code < 0x20:
            out.append(chr(0x2400 + code))          # the Control Pictures block: ␍ ␊ ␀
        elif code == 0x7F:
            out.append("\u2421")
        else:
            out.append("\\u%04x" % code)
    return "".join(out)


FILTERS = {"shown": shown, "shown_lines": lambda text: shown(text, keep_lines=True), "size": render.size, "when": render.when, "sender": render.sender}
GLOBALS = {"STATES": query.STATES, "VERDICTS": query.VERDICTS, "MODES": query.MODES,
           "SORT_KEYS": query.SORT_KEYS, "PAGE_SIZES": PAGE_SIZES}


# ---------------------------------------------------------------- the list
def parse_filters(args):
    """(Filters, view options, [errors]) from the list form's query string."""
    errors = []
    filters = query.Filters()
    for name, known, groups in (("states", query.STATES, query.STATE_GROUPS), ("verdicts", query.VERDICTS, None),
                                ("modes", query.MODES, None)):
        try:
            setattr(filters, name, query.split_choices(args.getlist(name[:-1]), known, groups, name[:-1]))
        except ValueError as exc:
            errors.append(str(exc))
    for name in TEXT_FILTERS:
        value = (args.get(name) or "").strip()
        if value:
            setattr(filters, name, value)
    for name in ("since", "until"):
        value = (args.get(name) or "").strip()
        if value:
            try:
                setattr(filters, name, query.parse_when(value))
            except ValueError as exc:
                errors.append("%s: %s" % (name, exc))
    filters.released = {"yes": True, "no": False}.get(args.get("released", ""))
    sort = args.get("sort") if args.get("sort") in query.SORT_KEYS else "created"
    try:
        page = min(max(1, int(args.get("page", 1))), 1000000)      # an absurd page is the last one, not an overflow
        per = int(args.get("per", 50))
    except ValueError:
        page, per = 1, 50
    per = per if per in PAGE_SIZES else 50
    view = {"sort": sort, "reverse": args.get("reverse") == "1", "page": page, "per": per}
    return filters, view, errors


@bp.route("/")
@auth.admin_required
def listing():
    filters, view, errors = parse_filters(flask.request.args)
    if errors:
        return flask.render_template("list.html", rows=[], total=0, releases={}, view=view, errors=errors,
                                     args=flask.request.args, pages=1), 400
    rows, total, releases = query.listing(store(), filters, view["sort"], view["reverse"],
                                          limit=view["per"], offset=(view["page"] - 1) * view["per"])
    pages = max(1, -(-total // view["per"]))
    return flask.render_template("list.html", rows=rows, total=total, releases=releases, view=view, errors=[],
                                 args=flask.request.args, pages=pages, page_url=_page_url)


def _page_url(page):
    args = flask.request.args.to_dict(flat=False)
    args["page"] = [str(page)]
    return flask.url_for("admin.listing", **args)


# ---------------------------------------------------------------- one message
@bp.route("/message/<queue_id>")
@auth.admin_required
def message(queue_id):
    info = history.describe(store(), queue_id)
    kept = info["file"]["present"] or info["file"].get("in_database")
    texts = body.text_parts(store(), info["id"]) if kept else []
    return flask.render_template("message.html", info=info, texts=texts, report_base=_report_base(),
                                 requests=release_requests.for_message(info["id"]))


def _report_base():
    """vxCube's API base, for links to a task's report (tasks/{id}/report), or None."""
    config = flask.current_app.config["VXGATE"]
    if not config.VxcubeApiAddress:
        return None
    from salmon_app.vxcube.client import api_base_url
    try:
        return api_base_url(config.VxcubeApiAddress)
    except ValueError:
        return None


@bp.route("/message/<queue_id>.eml")
@auth.admin_required
def download(queue_id):
    row, source = export.open_original(store(), queue_id)
    record(row.id, "exported", auth.actor(), "downloaded the original .eml")
    return flask.send_file(source, mimetype="message/rfc822", as_attachment=True,
                           download_name="%s.eml" % row.id, max_age=0)


def parse_to(text):
    """Addresses from a form field (comma or space separated), or ValueError."""
    found = [item.strip().strip("<>") for item in text.replace(",", " ").split()]
    bad = [a for a in found if not vxconfig.is_address(a)]
    if bad:
        raise ValueError("%s is not a mail address" % ", ".join(repr(a) for a in bad))
    return found


def release_many(ids, to=None, force=False, user=None):
    """Release each message; returns [(line, is_error)] as the CLI prints them."""
    lines = []
    relay = release.make_relay(flask.current_app.config["VXGATE"])
    try:
        for queue_id in ids:
            try:
                outcome = release.release(store(), queue_id, relay, to=to, force=force, user=user or auth.actor())
            except QuarantineError as exc:
                lines.append((str(exc), True))
                continue
            lines.append(release.describe(outcome))
    finally:
        relay.close()
    return lines


def flash_lines(lines):
    """Each (line, is_error) of an action as a message on the next page."""
    for line, is_error in lines:
        flask.flash(line, "error" if is_error else "ok")


def _to_from_form():
    if flask.request.form.get("target") != "other":
        return None
    try:
        to = parse_to(flask.request.form.get("to", ""))
    except ValueError as exc:
        flask.abort(400, str(exc))
    if not to:
        flask.abort(400, "give the address(es) to release to, or choose the original recipients")
    return to


@bp.route("/message/<queue_id>/release", methods=["POST"])
@auth.admin_required
def release_one(queue_id):
    queue_id = _id(queue_id)
    flash_lines(release_many([queue_id], _to_from_form(), force=flask.request.form.get("force") == "1"))
    return flask.redirect(flask.url_for("admin.message", queue_id=queue_id))


@bp.route("/message/<queue_id>/delete", methods=["POST"])
@auth.admin_required
def delete_one(queue_id):
    flash_lines(delete_many([_id(queue_id)]))
    return flask.redirect(flask.url_for("admin.listing"))


def delete_many(ids):
    removed, skipped = remove.remove_messages(store(), ids, user=auth.actor())
    lines = [("%s: deleted (%s)" % (r.queue_id, r.state), False) for r in removed]
    for queue_id, state in skipped.items():
        lines.append(("%s: no such message" % queue_id if state is None else
                      "%s: still in flight (state %s): not deleted" % (queue_id, state), True))
    return lines


@bp.route("/bulk", methods=["POST"])
@auth.admin_required
def bulk():
    ids = [_id(i) for i in flask.request.form.getlist("id")]
    action = flask.request.form.get("action")
    if not ids:
        flask.flash("select messages first", "error")
    elif action == "release":
        flash_lines(release_many(ids, _to_from_form()))
    elif action == "delete":
        flash_lines(delete_many(ids))
    else:
        flask.abort(400, "unknown action")
    return flask.redirect(auth.safe_next(flask.request.form.get("back")))


def _id(text):
    try:
        return normalise_id(text)
    except ValueError as exc:
        flask.abort(404, str(exc))
