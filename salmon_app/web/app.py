"""The Flask application factory: ``create_app(config)`` for ``vxgate web`` and for the tests.

One ``Store`` (the same database and spool the daemon uses, salmon_app/quarantine/store.py)
serves every request; peewee gives each server thread its own SQLite connection. Templates
are Jinja with autoescape (everything from mail is attacker text), static files are served by
vxgate itself (no CDN). Errors are pages with the status they stand for, never a traceback.
"""
import logging
import os
import secrets

import flask
from werkzeug.middleware.proxy_fix import ProxyFix

from salmon_app.quarantine.store import QuarantineError, Store
from salmon_app.web import admin, auth, recipient, release_requests, security, users

LOG = logging.getLogger("vxgate.web")
HERE = os.path.dirname(os.path.abspath(__file__))


def create_app(config, store=None):
    app = flask.Flask("salmon_app.web", template_folder=os.path.join(HERE, "templates"),
                      static_folder=os.path.join(HERE, "static"))
    app.secret_key = config.WebSecret or secrets.token_bytes(32)
    app.config["VXGATE"] = config
    app.config["USERS_FILE"] = users.path_of(config)
    app.config["STORE"] = store or Store(config)
    release_requests.create_table()
    security.setup(app, config)
    if config.WebBehindProxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    app.register_blueprint(auth.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(recipient.bp)
    app.jinja_env.filters.update(admin.FILTERS)
    app.jinja_env.globals.update(admin.GLOBALS)

    @app.context_processor
    def pending_requests():
        """The count beside "Requests" in the header of every administrator's page."""
        return {"requests": release_requests.pending_count() if flask.g.get("admin") else 0}

    @app.errorhandler(QuarantineError)
    def quarantine_error(exc):
        status = 404 if "no such message" in str(exc) or exc.status == 2 else 409
        return flask.render_template("error.html", status=status, text=str(exc)), status

    for status in (400, 401, 403, 404, 405, 409, 410, 413, 429, 500):
        app.register_error_handler(status, _error_page)
    return app


def _error_page(exc):
    status = getattr(exc, "code", None) or 500
    if status == 500:
        LOG.error("web console: internal error on %s", flask.request.path, exc_info=getattr(exc, "original_exception", None))
    text = getattr(exc, "description", None) or "Internal error; the log has the details."
    return flask.render_template("error.html", status=status, text=text), status
