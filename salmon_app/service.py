"""The object ``salmon start`` runs (``settings.receiver``): start everything, block, stop cleanly.

``salmon start`` calls ``receiver.start()`` in the main thread and ``salmon stop`` sends
SIGHUP; systemd sends SIGTERM. Either signal stops listening, answers sessions that wait,
lets workers finish and closes the database; whatever is still in flight resumes at the next
start.
"""
import logging
import signal
import threading

LOG = logging.getLogger("vxgate")


class Service:
    def __init__(self, build):
        self.build = build          # returns the gateway; called at start so errors surface there
        self.gateway = None
        self.stopped = threading.Event()

    def start(self, block=True):
        self.gateway = self.build()
        self.gateway.start()
        LOG.info("vxgate started: %s", ", ".join(str(s.address) for s in self.gateway.servers))
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._signal)
            signal.signal(signal.SIGUSR1, self._reload)
        if block:
            while not self.stopped.wait(0.5):
                pass
            self._shut_down()

    def _signal(self, signum, frame):
        LOG.info("signal %s received: shutting down", signal.Signals(signum).name)
        self.stopped.set()

    def _reload(self, signum, frame):
        LOG.info("SIGUSR1 received: reloading hooks")
        if self.gateway is not None:
            self.gateway.checks.reload()

    def stop(self):
        """Stop a service started with block=False (tests)."""
        self.stopped.set()
        self._shut_down()

    def _shut_down(self):
        if self.gateway is not None:
            self.gateway.shut_down()
            self.gateway = None
            LOG.info("vxgate stopped")
