"""Administrators' login and logout, and ``admin_required`` for the views that need one.

The session (a cookie signed with WebSecret) holds the user name and the time of the login;
a login is checked against the users file each time (a user removed with ``vxgate web
remove-user`` is out at their next click). A wrong name or password is a 401 with the same
words for both; too many are a 429 (security.limit_login). Logins and failures are logged
with the client address, never with the password.
"""
import functools
import logging
import time

import flask

from salmon_app.web import security, users

LOG = logging.getLogger("vxgate.web")
bp = flask.Blueprint("auth", __name__)


def current_admin():
    name = flask.session.get("admin")
    if not name:
        return None
    if name not in users.load(flask.current_app.config["USERS_FILE"]):
        flask.session.clear()
        return None
    return name


def actor():
    """How the history names what the logged-in administrator does."""
    return "%s (web console)" % flask.g.admin


def admin_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        flask.g.admin = current_admin()
        if flask.g.admin is None:
            if flask.request.method == "GET":
                return flask.redirect(flask.url_for("auth.login", next=flask.request.full_path.rstrip("?")))
            flask.abort(401)
        return view(*args, **kwargs)
    return wrapper


def safe_next(target):
    """Only a path on this site (an open redirect would send a phished admin elsewhere)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target \
            and target.isprintable():
        return target
    return flask.url_for("admin.listing")


@bp.route("/login", methods=["GET", "POST"])
@security.limit_login
def login():
    if flask.request.method == "GET":
        return flask.render_template("login.html", next=flask.request.args.get("next", ""))
    name = (flask.request.form.get("username") or "").strip()
    password = flask.request.form.get("password") or ""
    client = flask.request.remote_addr
    if not users.verify(flask.current_app.config["USERS_FILE"], name, password):
        LOG.warning("web console: failed login for %r from %s", name[:64], client)
        return flask.render_template("login.html", next=flask.request.form.get("next", ""),
                                     error="Wrong user name or password."), 401
    flask.session.clear()
    flask.session.permanent = True
    flask.session["admin"] = name
    flask.session["since"] = time.time()
    LOG.info("web console: %s logged in from %s", name, client)
    return flask.redirect(safe_next(flask.request.form.get("next")))


@bp.route("/logout", methods=["POST"])
def logout():
    name = flask.session.get("admin")
    flask.session.clear()
    if name:
        LOG.info("web console: %s logged out", name)
    return flask.redirect(flask.url_for("auth.login"))
