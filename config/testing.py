"""Test boot: the same wiring as config/boot.py, logging to stderr at DEBUG, errors raising."""
import logging

from salmon.routing import Router

from config import boot  # noqa: F401  (loads the handlers)

logging.getLogger().setLevel(logging.DEBUG)
Router.LOG_EXCEPTIONS = False
