"""Reloading the configuration in the running daemon: `vxgate reload`, `systemctl reload vxgate`.

The daemon re-reads its configuration file on SIGHUP (and SIGUSR1, the old hook-only signal),
applies every value that can change while mail flows (the hook and its limits, vxCube's
address, key, time-outs and file types, relay and BCC settings, session limits, retries,
retention, notices) and keeps the old value of each one that cannot (listening sockets,
worker counts, queue sizes, storage paths, logging, metrics socket, pid file, user), naming
those in one log line as "restart needed for ...". A file with an error changes nothing. The
outcome is written beside the pid file (``<PidFile>.reload``, JSON), where ``vxgate reload``
reads it back to tell the administrator what happened.
"""
import json
import logging
import os
import time

LOG = logging.getLogger("vxgate")

# Values bound to sockets, threads, files or the process itself: they take a restart.
RESTART_NEEDED = ("SmtpSocket", "BccSocket", "SmtpWorkers", "SmtpRelayWorkers", "SmtpQueueSize", "VxcubeWorkers",
                  "VxcubeQueueSize", "UseVxcube", "SpoolDir", "DatabasePath", "DatabaseUrl", "NodeName", "DatabaseBusyTimeout", "MetricsSocket", "Processes",
                  "PinProcesses", "LogTarget", "LogFormat", "LogLevel", "LogFile", "LogSyslogAddress", "PidFile", "User")


def changes(old, new):
    """(live, restart): names of the parameters whose value differs, split by what they need."""
    from salmon_app.config import SCHEMA
    changed = [p.name for p in SCHEMA if getattr(old, p.name) != getattr(new, p.name)]
    return [n for n in changed if n not in RESTART_NEEDED], [n for n in changed if n in RESTART_NEEDED]


def apply(gateway, new):
    """Make ``new`` the gateway's configuration, except what needs a restart; returns the outcome."""
    old = gateway.config
    live, restart = changes(old, new)
    effective = new.replace(**{name: getattr(old, name) for name in restart})
    gateway.configure(effective)
    for server in gateway.servers:
        gateway.limit_server(server)
    gateway.checks.analyser.configure(effective)
    gateway.checks.reload()             # hook files are read again even when their path is unchanged
    from salmon_app.log import config_secrets, install_redaction
    install_redaction(config_secrets(effective))
    outcome = {"time": time.time(), "ok": True, "applied": live, "restart_needed": restart, "error": ""}
    LOG.info("configuration reloaded from %s: %s%s", new.path or "built-in defaults",
             "changed " + ", ".join(live) if live else "nothing changed that applies live",
             "; restart needed for " + ", ".join(restart) if restart else "")
    return outcome


def reload_daemon(gateway, load):
    """What the daemon does on SIGHUP: ``load()`` the file again and apply it, or keep everything."""
    from salmon_app.config import ConfigError
    try:
        new = load()
    except ConfigError as exc:
        LOG.error("reload refused, the running configuration stays: %s", exc)
        return {"time": time.time(), "ok": False, "applied": [], "restart_needed": [], "error": str(exc)}
    try:
        return gateway.reconfigure(new)      # reload.apply, or every process's (processes.py)
    except Exception as exc:       # a half-applied reload is worse than none: say so loudly
        LOG.exception("reload failed while applying: %s", exc)
        return {"time": time.time(), "ok": False, "applied": [], "restart_needed": [],
                "error": "%s: %s" % (type(exc).__name__, exc)}


def result_path(pid_path):
    return pid_path + ".reload"


def write_result(pid_path, outcome):
    """Beside the pid file, replaced atomically (a reader never sees half of it)."""
    if not pid_path:
        return
    path = result_path(pid_path)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        with open(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(outcome, handle)
        os.replace(tmp, path)
    except OSError as exc:
        LOG.warning("cannot write the reload outcome to %s: %s", path, exc)


def read_result(pid_path):
    try:
        with open(result_path(pid_path)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
