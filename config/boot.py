"""Wiring for ``salmon start``: logging, routing, and the gateway as Salmon's receiver.

With ``Processes`` > 1 the receiver is the master of that many processes
(``salmon_app/processes.py``), each of which runs this file again as one of them
(``salmon_app/worker_process.py``) and wires its own gateway."""
import logging
import os

from salmon.routing import Router

from config import settings
from salmon_app.gateway import Gateway
from salmon_app import affinity
from salmon_app import config as vxconfig
from salmon_app import logsetup
from salmon_app.log import config_secrets, install_redaction
from salmon_app.processes import ProcessSet
from salmon_app.service import Service, state_lock
from salmon_app.storage import subnodes
from salmon_app.worker_process import this_process

HANDLERS = ["handlers.smtp_filter", "handlers.bcc_monitor", "handlers.notices"]

child = this_process()
# a process the master started again logs where the master does, whatever the file says now
LOGGING = child.pin(settings.CONFIG) if child else settings.CONFIG

os.makedirs("logs", mode=0o700, exist_ok=True)
logsetup.configure(LOGGING)     # LogTarget / LogFormat, or $VXGATE_LOGGING's file
install_redaction(config_secrets(LOGGING))

Router.LOG_EXCEPTIONS = False   # a handler error must reach the gateway (-> 4xx), not become a 250
Router.RELOAD = False
Router.load(HANDLERS)

CONFIG = settings.CONFIG
PID_PATH = os.environ.get("VXGATE_PID_PATH") or os.path.abspath(CONFIG.PidFile)


def load():
    return vxconfig.load(CONFIG.path)


def keep_to_core(slot=0, count=1, first=None):
    """PinProcesses: this mail process on one CPU core (salmon_app/affinity.py)."""
    if LOGGING.PinProcesses:
        core = affinity.pin(slot, count, first)
        if core is not None:
            logging.getLogger("vxgate").info("%srunning on CPU core %d (PinProcesses)",
                                             "process %d " % slot if child else "", core)


if child:       # one of several processes: the master holds the state lock and the pid file
    settings.receiver = Service(lambda: Gateway(child.config(CONFIG), Router, sockets=child.sockets, shares=child.shares),
                                load=lambda: child.config(load()), pid_path=PID_PATH, announce=child.announce,
                                core=lambda: keep_to_core(child.slot, child.count, child.first_cpu))
elif subnodes.count(CONFIG) > 1:
    settings.receiver = Service(lambda: ProcessSet(CONFIG, PID_PATH, keep_fds=[settings.receiver.lock_fd],
                                                   interrupted=settings.receiver.stopped.is_set),
                                lock=state_lock(CONFIG), load=load, pid_path=PID_PATH)
else:
    settings.receiver = Service(lambda: Gateway(CONFIG, Router), lock=state_lock(CONFIG), load=load, pid_path=PID_PATH,
                                core=keep_to_core)
