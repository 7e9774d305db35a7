"""Wiring for ``salmon start``: logging, routing, and the gateway as Salmon's receiver."""
import os

from salmon.routing import Router

from config import settings
from salmon_app.gateway import Gateway
from salmon_app import config as vxconfig
from salmon_app import logsetup
from salmon_app.log import config_secrets, install_redaction
from salmon_app.service import Service, state_lock

HANDLERS = ["handlers.smtp_filter", "handlers.bcc_monitor", "handlers.notices"]

os.makedirs("logs", mode=0o700, exist_ok=True)
logsetup.configure(settings.CONFIG)     # LogTarget / LogFormat, or $VXGATE_LOGGING's file
install_redaction(config_secrets(settings.CONFIG))

Router.LOG_EXCEPTIONS = False   # a handler error must reach the gateway (-> 4xx), not become a 250
Router.RELOAD = False
Router.load(HANDLERS)

settings.receiver = Service(lambda: Gateway(settings.CONFIG, Router), lock=state_lock(settings.CONFIG),
                            load=lambda: vxconfig.load(settings.CONFIG.path),
                            pid_path=os.environ.get("VXGATE_PID_PATH") or os.path.abspath(settings.CONFIG.PidFile))
