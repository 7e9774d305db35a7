"""The ``vxgate`` administration command: check-config, sample-config, demo and more.

Sub-commands are small functions registered in ``COMMANDS``; each returns an exit status.
Secrets are shown as ``***``.
"""
import argparse
import sys

from salmon_app import config as vxconfig

COMMANDS = {}


def command(name, help_text):
    def register(func):
        COMMANDS[name] = (func, help_text)
        return func
    return register


def _config_arg(parser):
    parser.add_argument("-c", "--config", help="configuration file (default: $VXGATE_CONFIG or config/vxgate.ini)")


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
        print("%s: OK" % (config.path or "built-in defaults"))
        return 0
    print("; %s: OK" % (config.path or "no file, built-in defaults"))
    section = None
    for param in vxconfig.SCHEMA:
        if param.section != section:
            section = param.section
            print("[%s]" % section)
        value = getattr(config, param.name)
        shown = "***" if param.kind == "secret" and value else vxconfig.format_value(param, value)
        print("%s = %s" % (param.name, shown))
    return 0


@command("sample-config", "print a sample configuration with every parameter and its default")
def sample_config(args):
    print(vxconfig.render_sample())
    return 0


@command("demo", "run a self-contained demo: vxgate, a local next hop and a few messages")
def demo(args):
    from salmon_app import demo as demo_module
    return demo_module.run(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="vxgate", description="vxgate administration")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        _config_arg(child)
        if name == "check-config":
            child.add_argument("-q", "--quiet", action="store_true", help="print only OK or the error")
        child.set_defaults(func=func)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
