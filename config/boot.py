"""Wiring for ``salmon start``: logging, routing, and the gateway as Salmon's receiver.

Logging goes to ``logs/vxgate.log`` (config/logging.conf), or to the journal when systemd
connected stderr to it (config/logging-journal.conf); $VXGATE_LOGGING overrides both.
"""
import logging.config
import os

from salmon.routing import Router

from config import settings
from salmon_app.gateway import Gateway
from salmon_app.log import install_redaction
from salmon_app.service import Service, stderr_is_journal

HANDLERS = ["handlers.smtp_filter", "handlers.bcc_monitor", "handlers.notices"]

LOGGING = os.environ.get("VXGATE_LOGGING") or (
    "config/logging-journal.conf" if stderr_is_journal() else "config/logging.conf")
if LOGGING.endswith("config/logging.conf"):
    os.makedirs("logs", mode=0o700, exist_ok=True)
logging.config.fileConfig(LOGGING, disable_existing_loggers=False)
install_redaction([settings.CONFIG.VxcubeApiKey, settings.CONFIG.BccReporterPassword,
                   settings.CONFIG.RepackPassword[5:-1] if "(" in settings.CONFIG.RepackPassword else ""])

Router.LOG_EXCEPTIONS = False   # a handler error must reach the gateway (-> 4xx), not become a 250
Router.RELOAD = False
Router.load(HANDLERS)

settings.receiver = Service(lambda: Gateway(settings.CONFIG, Router), lock=settings.CONFIG.DatabasePath + ".lock")
