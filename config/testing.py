"""Test boot: the same wiring as config/boot.py, logging to stderr, handler errors raising."""
import os

os.environ.setdefault("VXGATE_LOGGING", os.path.join(os.path.dirname(__file__), "logging-testing.conf"))

from salmon.routing import Router  # noqa: E402

from config import boot  # noqa: E402,F401  (loads the handlers into the Router)

Router.LOG_EXCEPTIONS = False
