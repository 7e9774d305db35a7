"""The ``vxgate`` administration command: check-config, sample-config, demo and more.

Sub-commands are small functions registered in ``COMMANDS``; each returns an exit status.
Secrets are shown as ``***``.
"""
import argparse
import os
import sys

from salmon_app import config as vxconfig

COMMANDS = {}


def command(name, help_text):
    def register(func):
        COMMANDS[name] = (func, help_text)
        return func
    return register


def _config_arg(parser):
    parser.add_argument("-c", "--config", help="configuration file (default: $VXGATE_CONFIG, %s if it exists, "
                        "else config/vxgate.ini)" % vxconfig.SYSTEM_CONFIG)


def load_config(args):
    try:
        return vxconfig.load(args.config)
    except vxconfig.ConfigError as exc:
        print("vxgate: %s" % exc, file=sys.stderr)
        raise SystemExit(2)


@command("check-config", "validate the configuration file and print the values in force")
def check_config(args):
    config = load_config(args)
    if args.quiet:
        if not _check_hook(config, dry_run=True, quiet=True):
            return 1
        print("%s: OK" % (config.path or "built-in defaults"))
        return 0
    print("; %s: the values in force" % (config.path or "no file, built-in defaults"))
    section = None
    for param in vxconfig.SCHEMA:
        if param.section != section:
            section = param.section
            print("[%s]" % section)
        value = getattr(config, param.name)
        shown = "***" if param.kind == "secret" and value and value != "None" else vxconfig.format_value(param, value)
        print("%s = %s" % (param.name, shown))
    if not _check_hook(config, dry_run=True):
        return 1
    print("; %s: OK" % (config.path or "built-in defaults"))
    return 0


@command("sample-config", "print a sample configuration with every parameter and its default")
def sample_config(args):
    print(vxconfig.render_sample())
    return 0


@command("vxcube-sim", "run the vxCube emulator (try vxgate without a licence; see --help)")
def vxcube_sim(args):
    from salmon_app.vxcube import sim
    return sim.main(args.rest)


# commands that read no configuration file are not offered -c
NO_CONFIG = ("sample-config", "vxcube-sim", "demo")


@command("reload", "check the configuration and hook, then make the running daemon re-read them (SIGHUP)")
def reload_config(args):
    import signal
    import time
    from salmon_app import pidfile, reload
    config = load_config(args)
    if not _check_hook(config, dry_run=True, quiet=True):
        return 1
    pid_path = os.path.abspath(args.pid or config.PidFile)
    state = pidfile.inspect(pid_path)
    if not state.running:
        print("vxgate: cannot signal the daemon: %s" % state.describe(), file=sys.stderr)
        return 1
    before = reload.read_result(pid_path)
    try:
        os.kill(state.pid, signal.SIGHUP)
    except OSError as exc:
        print("vxgate: cannot signal the daemon (pid %d): %s" % (state.pid, exc.strerror), file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        outcome = reload.read_result(pid_path)
        if outcome and outcome != before:
            return _say_reloaded(state.pid, config, outcome)
        time.sleep(0.1)
    print("vxgate: reload requested from vxgate (pid %d); no answer within %gs: see its log"
          % (state.pid, args.wait), file=sys.stderr)
    return 1


def _say_reloaded(pid, config, outcome):
    if not outcome["ok"]:
        print("vxgate: the daemon (pid %d) refused the reload and runs as before: %s" % (pid, outcome["error"]),
              file=sys.stderr)
        return 1
    applied = outcome["applied"]
    print("vxgate (pid %d) reloaded %s: %s" % (pid, config.path or "the built-in defaults",
                                               "changed " + ", ".join(applied) if applied else "no live change"))
    if outcome["restart_needed"]:
        print("restart needed for %s (salmon stop; salmon start, or systemctl restart vxgate)"
              % ", ".join(outcome["restart_needed"]))
    return 0


COMMANDS["reload-hooks"] = (reload_config, "the same as reload (its older name)")


@command("repack-password", "print the archive password of a repacked message from its identifier")
def repack_password(args):
    from salmon_app.policy import RepackPassword
    config = load_config(args)
    password = RepackPassword.parse(config.RepackPassword).password_for(args.identifier)
    if password is None:
        print("vxgate: RepackPassword = None: the archive %s has no password" % args.identifier, file=sys.stderr)
        return 1
    print(password)
    return 0


def _check_hook(config, dry_run=False, quiet=False):
    """The hook loads (and, with ``dry_run``, decides the built-in samples without an error)."""
    if not config.SmtpHook:
        if not quiet:
            print("SmtpHook: none (every message is accepted unchanged)")
        return True
    from salmon_app.policy import HookError, HookRuntime
    try:
        HookRuntime(config.SmtpHook, memory_limit=config.SmtpHookMemory, time_limit=config.SmtpHookTimeout,
                    list_dir=config.SmtpHookLists)
    except HookError as exc:
        print("vxgate: SmtpHook does not load: %s" % exc, file=sys.stderr)
        return False
    name = "inline code" if "smtp_hook" in config.SmtpHook else config.SmtpHook
    if not dry_run:
        print("SmtpHook: %s loads" % name)
        return True
    from salmon_app.hook_dryrun import dry_run as run_samples
    lines, ok = run_samples(config)
    if not ok:
        print("vxgate: SmtpHook %s loads but fails on sample messages:\n%s" % (name, "\n".join(lines)), file=sys.stderr)
        return False
    if not quiet:
        print("SmtpHook: %s loads; its decisions for sample messages:\n%s" % (name, "\n".join(lines)))
    return True


@command("doctor", "check a live installation: config, hook, sockets, storage, next hop, vxCube, report server")
def doctor(args):
    from salmon_app import doctor as doctor_module
    return doctor_module.run(args.config)


@command("demo", "run a self-contained demo: vxgate, a local next hop and a few messages")
def demo(args):
    from salmon_app import demo as demo_module
    return demo_module.run(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="vxgate", description="vxgate administration")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text, add_help=name != "vxcube-sim")
        if name not in NO_CONFIG:
            _config_arg(child)
        if name == "check-config":
            child.add_argument("-q", "--quiet", action="store_true", help="print only OK or the error")
        if name in ("reload", "reload-hooks"):
            child.add_argument("--pid", help="pid file of the daemon (default: PidFile of the configuration)")
            child.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the daemon's answer (15)")
        if name == "repack-password":
            child.add_argument("identifier", help="the archive identifier shown to the recipient (<queue id>-<hex>)")
        if name == "vxcube-sim":
            child.add_argument("rest", nargs=argparse.REMAINDER, help="emulator options (--listen, --key, --analysis-time)")
        child.set_defaults(func=func)
    from salmon_app.quarantine.cli import register as register_quarantine
    register_quarantine(sub)
    from salmon_app.storage.dbcli import register as register_db
    register_db(sub)
    from salmon_app.web.cli import register as register_web
    register_web(sub)
    return parser


def version_text():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return "vxgate %s (salmon-mail %s, Python %s)" % (
            version("vxgate"), version("salmon-mail"), sys.version.split()[0])
    except PackageNotFoundError:
        return "vxgate (not installed: run from a source tree)"


def main(argv=None):
    os.umask(0o077)     # exports and a first database are private, whatever the shell's umask
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["vxcube-sim"]:
        # the emulator parses its own options (argparse's REMAINDER drops a leading --listen)
        return COMMANDS["vxcube-sim"][0](argparse.Namespace(rest=argv[1:])) or 0
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
