"""What keeps the console safe in a browser: headers, the session cookie, CSRF and login limits.

Every answer carries a Content-Security-Policy that allows only vxgate's own scripts, styles
and images (no inline script, no framing: ``frame-ancestors 'none'``), ``nosniff``, no
Referer to other sites (recipients' links carry a signed token) and no caching of pages with mail data.
The session cookie is HttpOnly and SameSite=Strict, and Secure when the console speaks
HTTPS (WebTlsCert) or sits behind a TLS proxy (WebBehindProxy). Every POST needs the CSRF
token of the session (Flask-WTF; a missing or wrong one is a 400). Failed logins are
limited per client address and per user name (Flask-Limiter, in this process's memory):
only failures count, so an administrator who types the password right is never locked out
by the limit on their address once they succeed within it.
"""
import flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFProtect

# failed logins allowed before further attempts are answered 429
LOGIN_LIMIT_ADDRESS = "5 per 15 minutes"
LOGIN_LIMIT_NAME = "10 per hour"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, storage_uri="memory://", default_limits=[])


def setup(app, config):
    app.config.update(
        SESSION_COOKIE_NAME="vxgate_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(config.WebTlsCert) or bool(config.WebBehindProxy and config.WebBaseUrl.startswith("https:")),
        PERMANENT_SESSION_LIFETIME=int(config.WebSessionLifetime),
        WTF_CSRF_TIME_LIMIT=int(config.WebSessionLifetime),
        WTF_CSRF_SSL_STRICT=True,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    csrf.init_app(app)
    limiter.init_app(app)
    app.after_request(_headers)


def _headers(response):
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"      # Flask-WTF checks it on HTTPS POSTs; never sent elsewhere
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not flask.request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"
    if flask.current_app.config.get("SESSION_COOKIE_SECURE"):
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


def login_name():
    """The rate-limit key of the user name being tried."""
    return "name:" + (flask.request.form.get("username") or "").strip().lower()[:64]


def failed(response):
    return response.status_code == 401


def limit_login(view):
    """Failed logins count against the client address and against the user name."""
    view = limiter.limit(LOGIN_LIMIT_NAME, key_func=login_name, methods=["POST"], deduct_when=failed)(view)
    return limiter.limit(LOGIN_LIMIT_ADDRESS, methods=["POST"], deduct_when=failed)(view)
