"""The ``salmon`` command of a vxgate installation: Salmon's own command line, with vxgate's
rules for ``start``, ``stop`` and ``status``.

Salmon's ``start`` refuses to run while any pid file exists (even one left by ``kill -9``),
daemonizes with umask 0, writes no pid file in the foreground, and its ``stop`` deletes the pid
file before the daemon has exited (python-daemon then logs a ``lockfile.NotLocked``
traceback). vxgate installs this wrapper as ``salmon`` (setup.py) so that, before Salmon's
code runs: the umask is 0077, the configuration is checked (its error shown, not hidden in
``logs/salmon.err``), root is refused unless ``User`` or ``--allow-root`` says otherwise, the
pid file defaults to ``PidFile`` and a stale one is removed with a message. ``stop`` sends
SIGTERM and waits until vxgate has finished; the daemon removes its own pid file. Every other
sub-command is Salmon's, unchanged.
"""
import argparse
import os
import pwd
import signal
import socket
import sys
import time

from salmon_app import config as vxconfig
from salmon_app import pidfile

UMASK = 0o077


def say(text):
    print(text, file=sys.stderr, flush=True)


def salmon_main(argv):
    from salmon.commands import main as salmon_cli
    return salmon_cli.main(args=argv, prog_name="salmon")


def main(argv=None):
    os.umask(UMASK)
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"start": start, "stop": stop, "status": status}
    if argv and argv[0] in commands and not ({"-h", "--help"} & set(argv)):
        return commands[argv[0]](argv[1:])
    return salmon_main(argv)


def _load_config(hint=""):
    try:
        return vxconfig.load()
    except vxconfig.ConfigError as exc:
        say("vxgate: configuration error: %s%s" % (exc, hint))
        raise SystemExit(2)


def _configured_pid_file():
    """PidFile for stop/status; a broken configuration must not leave the daemon unstoppable."""
    return _load_config("\n(the running daemon is untouched; give its pid file with --pid to reach it without "
                        "reading the configuration)").PidFile


def _pid_arg(parser):
    parser.add_argument("--pid", help="pid file (default: PidFile of the configuration)")


def start(argv):
    parser = argparse.ArgumentParser(prog="salmon start", add_help=False)
    _pid_arg(parser)
    parser.add_argument("-f", "--force", action="store_true")
    parser.add_argument("--daemon", dest="daemon", action="store_true", default=True)
    parser.add_argument("--no-daemon", dest="daemon", action="store_false")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--umask", type=int)
    parser.add_argument("--allow-root", action="store_true")
    parser.add_argument("--wait", type=float, default=300.0)
    args, rest = parser.parse_known_args(argv)
    config = _load_config()
    if os.geteuid() == 0:
        _leave_root(config, args.allow_root)
    path = os.path.abspath(args.pid or config.PidFile)
    state = pidfile.remove_stale(path, say)
    if state.status == "denied":
        say("vxgate: %s" % state.describe())
        return 1
    if state.running and not args.force:
        say("vxgate: %s; `salmon stop` stops it" % state.describe())
        return 1
    if state.running:
        say("vxgate: --force: starting although %s" % state.describe())
        os.unlink(path)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.environ["VXGATE_PID_PATH"] = path     # both modes: where the daemon writes reload outcomes
    salmon_args = ["start", "--pid", path] + rest
    if args.debug:
        salmon_args.append("--debug")
    if args.daemon and not args.debug:
        # python-daemon applies its own umask (0 unless told) before it writes the pid file
        salmon_args += ["--umask", str(args.umask if args.umask is not None else UMASK)]
        os.environ.pop("VXGATE_PIDFILE", None)   # python-daemon writes and removes this one
        return _start_daemon(salmon_args, path, args.wait)
    salmon_args.append("--no-daemon")
    os.environ["VXGATE_PIDFILE"] = path      # the foreground service writes it itself
    try:
        return salmon_main(salmon_args)
    except Exception as exc:    # noqa: BLE001 - as the daemon's start reports it: one line, no traceback
        import logging
        logging.getLogger("vxgate").debug("stopped", exc_info=True)
        say("vxgate: stopped: %s" % (str(exc) or type(exc).__name__))
        return 1


def _start_daemon(salmon_args, path, wait):
    """Daemonize through Salmon in a child; here, wait for the daemon's READY=1 (the notify
    protocol of config/systemd, over a private socket) or its end, and say which."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    name = "@vxgate-start-%d-%s" % (os.getpid(), os.urandom(6).hex())
    listener.bind("\0" + name[1:])
    os.environ["NOTIFY_SOCKET"] = name
    child = os.fork()
    if child == 0:
        listener.close()
        me = os.getpid()
        try:
            return salmon_main(salmon_args)     # the daemon (a grandchild) returns through here
        finally:
            if os.getpid() == me:
                os._exit(1)     # Salmon failed before it daemonized; the parent reports it
    os.waitpid(child, 0)
    listener.settimeout(0.1)
    deadline, daemon, failure = time.monotonic() + wait, None, ""
    while time.monotonic() < deadline:
        try:
            fields = dict(line.split("=", 1) for line in listener.recv(4096).decode().splitlines() if "=" in line)
        except socket.timeout:
            fields = {}
        if fields.get("READY") == "1":
            say("vxgate started (pid %s): %s" % (fields.get("MAINPID", "?"), fields.get("STATUS", "")))
            return 0
        if fields.get("MAINPID", "").isdigit():
            daemon = int(fields["MAINPID"])
        if fields.get("STATUS", "").startswith("start-up failed"):
            failure = fields["STATUS"]
        state = pidfile.inspect(path)
        daemon = daemon or (state.pid if state.running else None)
        if (daemon and not pidfile.alive(daemon)) or (not daemon and state.stale):
            break
    else:
        say("vxgate: no word from the daemon after %gs (pid file %s); it may still be recovering: "
            "salmon status, logs/vxgate.log" % (wait, path))
        return 1
    say("vxgate: the daemon stopped during start-up: %s (the details: logs/salmon.err, logs/vxgate.log)"
        % (failure or _last_line("logs/salmon.err")))
    return 1


def _last_line(path):
    try:
        with open(path, errors="replace") as handle:
            lines = [line.strip() for line in handle.readlines()[-20:] if line.strip()]
    except OSError as exc:
        return "cannot read %s: %s" % (path, exc.strerror)
    return lines[-1] if lines else "no error recorded"


def _leave_root(config, allow_root):
    """Switch to ``User`` before any file is made; refuse root unless told."""
    if config.User and config.User != "root":
        try:
            entry = pwd.getpwnam(config.User)
        except KeyError:
            say("vxgate: User = %s: no such user (create it: useradd --system %s)" % (config.User, config.User))
            raise SystemExit(2)
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
        return
    if allow_root or config.User == "root" or os.environ.get("VXGATE_ALLOW_ROOT"):
        os.environ["VXGATE_ALLOW_ROOT"] = "1"
        return
    say("vxgate: refusing to run as root: files made as root lock the service user out, and a mail filter "
        "needs no privileges. Set User = vxgate in [Root] of %s (vxgate switches to it), run as that user "
        "(runuser -u vxgate -- salmon start), or give --allow-root" % (config.path or "the configuration"))
    raise SystemExit(1)


def stop(argv):
    parser = argparse.ArgumentParser(prog="salmon stop", description="stop vxgate and wait until it has finished")
    _pid_arg(parser)
    parser.add_argument("-f", "--force", action="store_true", help="kill (SIGKILL): in-flight mail resumes at the next start")
    parser.add_argument("--all", dest="all_pids", metavar="DIR", help="stop every daemon with a .pid file in DIR")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a clean stop (default 120)")
    args = parser.parse_args(argv)
    if args.all_pids:
        import glob
        paths = sorted(glob.glob(os.path.join(args.all_pids, "*.pid")))
    else:
        paths = [args.pid or _configured_pid_file()]
    return max([_stop_one(path, args.force, args.timeout) for path in paths] or [1])


def _stop_one(path, force, timeout):
    state = pidfile.inspect(path)
    if state.status in ("absent", "denied"):
        say("vxgate: %s" % state.describe())
        return 1
    if state.stale:
        pidfile.remove_stale(path, say)
        say("vxgate is not running")
        return 0
    os.kill(state.pid, signal.SIGKILL if force else signal.SIGTERM)
    say("vxgate: stopping pid %d (%s); waiting until it has finished its work"
        % (state.pid, "SIGKILL" if force else "SIGTERM"))
    deadline = time.monotonic() + timeout
    while pidfile.inspect(path).running and pidfile.inspect(path).pid == state.pid:
        if time.monotonic() > deadline:
            say("vxgate: pid %d is still finishing after %gs; it stops by itself, or `salmon stop --force` "
                "kills it (mail in flight resumes at the next start)" % (state.pid, timeout))
            return 1
        time.sleep(0.1)
    pidfile.remove_stale(path, lambda text: None)    # a killed daemon cannot remove its own
    say("vxgate stopped")
    return 0


def status(argv):
    parser = argparse.ArgumentParser(prog="salmon status")
    _pid_arg(parser)
    args = parser.parse_args(argv)
    state = pidfile.inspect(args.pid or _configured_pid_file())
    print(state.describe())
    return 0 if state.running else (1 if state.stale else 3)
