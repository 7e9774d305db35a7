"""Serving the console: cheroot's threaded WSGI server on WebSocket, HTTPS with WebTlsCert/WebTlsKey.

cheroot rather than waitress: waitress has no TLS at all, and the console must be able to
speak HTTPS by itself (a reverse proxy stays possible: WebBehindProxy). The process logs
like the daemon (LogTarget, LogFormat) with the same redaction of secrets (WebSecret among
them), stops cleanly on SIGTERM or Ctrl-C, and refuses to start with a clear line when the
socket is taken or the certificate cannot be read.
"""
import logging
import signal
import ssl

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

LOG = logging.getLogger("vxgate.web")
THREADS = 8


class ServeError(Exception):
    pass


def make_server(config, app):
    address = config.WebSocket
    server = wsgi.Server((address.host, address.port), app, numthreads=THREADS, server_name="vxgate",
                         shutdown_timeout=5)
    if config.WebTlsCert:
        try:
            context_check = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context_check.load_cert_chain(config.WebTlsCert, config.WebTlsKey)
        except (OSError, ssl.SSLError) as exc:
            raise ServeError("cannot use WebTlsCert %s / WebTlsKey %s: %s" % (config.WebTlsCert, config.WebTlsKey, exc)) from None
        server.ssl_adapter = BuiltinSSLAdapter(config.WebTlsCert, config.WebTlsKey)
    return server


def serve(config, app):
    server = make_server(config, app)
    try:
        server.prepare()
    except OSError as exc:
        raise ServeError("cannot listen on WebSocket %s: %s" % (config.WebSocket, exc.strerror or exc)) from None
    scheme = "https" if config.WebTlsCert else "http"
    host, port = server.bind_addr[:2]
    LOG.info("web console listening on %s://%s:%d/", scheme, "[%s]" % host if ":" in host else host, port)

    def stop(signum, frame):
        # raised in the main thread, which runs cheroot's loop: it ends the loop like Ctrl-C
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve()
    except KeyboardInterrupt:
        LOG.info("web console stopping")
    finally:
        server.stop()
    LOG.info("web console stopped")
