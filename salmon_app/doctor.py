"""``vxgate doctor``: checks a live installation and says how to fix what is wrong.

Each check prints ``ok``, ``WARN`` or ``FAIL`` with what it saw and, when something is wrong,
the fix. The checks: the configuration, the hook, the pid file (running, or what a stale one
means), the listening sockets, the spool and the
database (writable, private; reachable, at the schema this vxgate needs, and the clocks of the
nodes that share it), the next hop (answers SMTP), vxCube (reachable, key valid,
licence and quota) and the report server of BCC mode (reachable, the credentials work).
"""
import errno
import os
import smtplib
import socket
import stat

from salmon_app import config as vxconfig

OK, WARN, FAIL = "ok", "WARN", "FAIL"


class Report:
    def __init__(self, out):
        self.out, self.failed = out, 0

    def add(self, status, name, seen, fix=""):
        self.out("%-4s %-22s %s" % (status, name, seen))
        if fix and status != OK:
            self.out("     %-22s fix: %s" % ("", fix))
        self.failed += status == FAIL


def run(path, out=print, timeout=5.0):
    report = Report(out)
    try:
        config = vxconfig.load(path)
    except vxconfig.ConfigError as exc:
        report.add(FAIL, "configuration", str(exc), "correct the line named above (vxgate sample-config shows every parameter)")
        return 1
    report.add(OK, "configuration", config.path or "built-in defaults (no config/vxgate.ini)")
    check_hook(report, config)
    check_pidfile(report, config)
    check_listen(report, "SmtpSocket", config.SmtpSocket, timeout)
    if config.BccSocket:
        check_listen(report, "BccSocket", config.BccSocket, timeout)
    check_storage(report, config)
    check_database(report, config, timeout)
    check_smtp(report, "SmtpSenderRelay", config.SmtpSenderRelay, timeout,
               fix="start the MTA's re-injection listener (master.cf: 127.0.0.1:10026 ... smtpd) or correct SmtpSenderRelay")
    if config.UseVxcube:
        check_vxcube(report, config, timeout)
    if config.BccSocket:
        check_smtp(report, "BccSmtpServer", config.BccSmtpServer, timeout, login=(
            config.BccReporterAddress, config.BccReporterPassword), tls=config.BccSmtpTls.lower(),
            ca_file=config.BccSmtpCaFile, verify=config.BccSmtpVerifyTls,
            fix="check BccSmtpServer, BccReporterAddress and BccReporterPassword")
    out("%s" % ("all checks passed" if not report.failed else "%d check(s) failed" % report.failed))
    return 1 if report.failed else 0


def check_hook(report, config):
    if not config.SmtpHook:
        report.add(WARN, "SmtpHook", "none: every message is accepted unchanged",
                   "set SmtpHook = config/hooks/default.lua (or your policy)")
        return
    from salmon_app.policy import HookError, HookRuntime
    try:
        HookRuntime(config.SmtpHook, memory_limit=config.SmtpHookMemory, time_limit=config.SmtpHookTimeout,
                    list_dir=config.SmtpHookLists)
        report.add(OK, "SmtpHook", "loads (%s)" % ("inline" if "smtp_hook" in config.SmtpHook else config.SmtpHook))
    except HookError as exc:
        report.add(FAIL, "SmtpHook", str(exc), "fix the Lua error, then `vxgate reload`")


def check_pidfile(report, config):
    """Is the daemon that PidFile names alive, and if it is not, what happened to it."""
    from salmon_app import pidfile
    state = pidfile.inspect(config.PidFile)
    if state.running:
        report.add(OK, "PidFile", state.describe())
    elif state.status == "absent":
        report.add(OK, "PidFile", "%s: none, vxgate is not running (stopped cleanly or never started)" % config.PidFile)
    elif state.status == "denied":
        report.add(WARN, "PidFile", state.describe(), "run vxgate doctor as the service user or as root")
    else:
        report.add(WARN, "PidFile", state.describe(),
                   "salmon start (or systemctl start vxgate) removes it and resumes the mail in flight; why it "
                   "ended: the end of logs/vxgate.log and logs/salmon.err (journalctl -u vxgate under systemd)")


def _connect(address, timeout):
    if address.is_unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address.path)
        return sock
    return socket.create_connection((address.host, address.port), timeout=timeout)


def check_listen(report, name, address, timeout):
    """Bindable, or already served by a running vxgate (its greeting says so).

    Binding comes first: only an address of this host that is in use is then connected to,
    so the check never sends anything to another machine.
    """
    try:
        _probe_bind(address)
        report.add(WARN, name, "%s is free: vxgate is not running" % address, "salmon start (or systemctl start vxgate)")
        return
    except OSError as exc:
        in_use = exc.errno in (errno.EADDRINUSE, errno.EEXIST)
        if not in_use:
            report.add(FAIL, name, "%s cannot be bound: %s" % (address, exc),
                       "use a local address of this host, a port above 1023 or root, and a writable socket directory")
            return
    try:
        with _connect(address, timeout) as sock:
            banner = sock.makefile("rb").readline().decode("utf-8", "replace").strip()
    except OSError:
        banner = ""
    if "vxgate" in banner:
        report.add(OK, name, "%s: vxgate is listening (%s)" % (address, banner))
    else:
        report.add(FAIL, name, "%s is used by another program (%s)" % (address, banner or "no SMTP greeting"),
                   "stop that program or choose another %s" % name)


def _probe_bind(address):
    if address.is_unix:
        if os.path.exists(address.path):
            raise OSError(errno.EADDRINUSE, "socket file exists")
        directory = os.path.dirname(address.path) or "."
        if not os.access(directory, os.W_OK):
            raise PermissionError(errno.EACCES, "cannot create sockets in %s" % directory)
        return
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address.host, address.port))


def check_storage(report, config):
    places = [("SpoolDir", config.SpoolDir, True)]
    if not config.DatabaseUrl:
        places.append(("DatabasePath", config.DatabasePath, False))
    for name, path, want_dir in places:
        target = path if want_dir else os.path.dirname(os.path.abspath(path))
        if not os.path.exists(path):
            parent = os.path.dirname(os.path.abspath(path))
            if os.access(parent if os.path.exists(parent) else ".", os.W_OK):
                report.add(WARN, name, "%s does not exist yet (created at start)" % path)
            else:
                report.add(FAIL, name, "%s does not exist and %s is not writable" % (path, parent),
                           "mkdir -p %s && chown vxgate: %s" % (target, target))
            continue
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if not os.access(path, os.W_OK) or (want_dir and not os.access(path, os.X_OK)):
            report.add(FAIL, name, "%s is not writable by this user" % path, "chown -R vxgate: %s" % path)
        elif mode & 0o077:
            report.add(FAIL, name, "%s has mode %o: others can read quarantined mail" % (path, mode),
                       "chmod %s %s" % ("0700" if want_dir else "0600", path))
        else:
            report.add(OK, name, "%s (mode %o)" % (path, mode))


SKEW_LIMIT = 2.0      # seconds between a node's clock and the database server's


def check_database(report, config, timeout):
    """Connect as the daemon does; the schema version; each node's clock against the server's."""
    import time
    from salmon_app.storage import engine, migrations
    where = engine.location(config)
    kind, path = engine.parse(where)
    if kind == "sqlite" and not os.path.exists(path):
        return      # check_storage said it is created at start
    shown = engine.shown(where)
    try:
        database = engine.connect(where, busy_timeout=timeout, connect_timeout=max(1, int(timeout)))
        database.connect()
        found = migrations.version(database)
    except Exception as exc:      # any driver's error: the point is to say it in one line
        report.add(FAIL, "database", "%s: %s" % (shown, engine.error_text(exc, where)),
                   "check DatabaseUrl (host, port, database, user, password) and the server's pg_hba.conf"
                   if kind != "sqlite" else "check DatabasePath and its permissions")
        return
    try:
        if found == migrations.CURRENT:
            report.add(OK, "database", "%s: schema %d" % (shown, found))
        elif found is not None and found > migrations.CURRENT:
            report.add(FAIL, "database", "%s: schema %d is newer than this vxgate's %d" % (shown, found, migrations.CURRENT),
                       "upgrade vxgate on this node")
        elif kind == "sqlite":
            report.add(WARN, "database", "%s: schema %s; vxgate %d upgrades it at start" % (shown, found, migrations.CURRENT))
        else:
            report.add(FAIL, "database", "%s: schema %s, this vxgate needs %d" % (shown, found, migrations.CURRENT),
                       "vxgate db upgrade")
        if kind == "sqlite" or not found:
            return
        server = engine.server_time(database)
        skew = time.time() - server
        nodes = database.execute_sql('SELECT "name", "seen", "skew" FROM "node" ORDER BY "name"').fetchall()
        far = ["%s %+.1fs" % (name, value) for name, _, value in nodes
               if value is not None and abs(value) > SKEW_LIMIT]
        if abs(skew) > SKEW_LIMIT:
            far.insert(0, "this host %+.1fs" % skew)
        seen = "%d node(s): %s" % (len(nodes), ", ".join(
            "%s (seen %ds ago)" % (name, max(0, server - seen_at)) for name, seen_at, _ in nodes) or "none yet")
        if far:
            report.add(WARN, "node clocks", seen + "; clocks off the database server's: " + ", ".join(far),
                       "run NTP (chrony or systemd-timesyncd) on every node and the database server")
        else:
            report.add(OK, "node clocks", seen + "; within %gs of the database server" % SKEW_LIMIT)
    finally:
        database.close()


def check_smtp(report, name, address, timeout, fix, login=None, tls="off", ca_file="", verify=True):
    """Connect the way vxgate's relay does (same TLS choice, same AUTH) and report what happened."""
    from salmon_app.relay import Relay, describe
    if address is None:
        report.add(FAIL, name, "not set", fix)
        return
    user, password = login if login and login[0] else (None, None)
    try:
        with Relay(address, timeout=timeout, hostname=socket.getfqdn(), username=user, password=password,
                   tls=tls, ca_file=ca_file, verify=verify).connect() as client:
            greeting = client.ehlo_resp or client.helo_resp or b""
            seen = "%s answers: %s" % (address, greeting.decode("utf-8", "replace").splitlines()[0])
            if user:
                seen += "; AUTH as %s accepted" % user
        report.add(OK, name, seen)
    except smtplib.SMTPAuthenticationError as exc:
        report.add(FAIL, name, "%s refused the credentials of %s (%d)" % (address, user, exc.smtp_code), fix)
    except (OSError, smtplib.SMTPException) as exc:
        report.add(FAIL, name, "%s: %s" % (address, describe(exc)), fix)


def check_vxcube(report, config, timeout):
    from salmon_app.vxcube.client import RetryPolicy, VxcubeClient, VxcubeError
    verify = config.VxcubeCaFile or config.VxcubeVerifyTls
    try:
        client = VxcubeClient(config.VxcubeApiAddress, config.VxcubeApiKey, timeout=timeout, verify=verify,
                              retry=RetryPolicy(attempts=1, initial=0, maximum=0, max_elapsed=timeout))
    except ValueError as exc:
        report.add(FAIL, "vxCube", str(exc), "VxcubeApiAddress: host, host:port or https://host[:port]/")
        return
    try:
        licence = client.license()
    except VxcubeError as exc:
        fix = ("check VxcubeApiKey" if exc.status in (401, 403) else
               "check VxcubeApiAddress, the network and VxcubeCaFile/VxcubeVerifyTls")
        report.add(FAIL, "vxCube", "%s: %s" % (config.VxcubeApiAddress, exc), fix)
        return
    finally:
        client.close()
    total, spent = licence.get("uploads_total"), licence.get("uploads_spent")
    seen = "%s: key accepted, uploads %s of %s used" % (config.VxcubeApiAddress, spent, total)
    if total is not None and spent is not None and total - spent <= 0:
        report.add(FAIL, "vxCube", seen + ": quota exhausted (files are analysed as unchecked)", "renew the vxCube licence")
    elif total and spent is not None and spent > 0.9 * total:
        report.add(WARN, "vxCube", seen + ": less than 10% left", "plan a larger licence")
    else:
        report.add(OK, "vxCube", seen)
