"""The ``vxgate web`` command: serve the console, and manage its administrators.

``vxgate web`` serves on WebSocket until stopped; ``vxgate web add-user NAME`` adds an
administrator or changes their password, read from the terminal (twice) or from standard
input (one line, for scripts), never from the command line where ``ps`` and the shell
history would keep it; ``remove-user`` and ``users`` do the obvious. Errors are one line on
stderr with what to do; exit status 2 for a configuration mistake, 1 for the rest.
"""
import argparse
import getpass
import sys

from salmon_app import config as vxconfig

PROG = "vxgate web"


def register(subparsers):
    parser = subparsers.add_parser("web", help="serve the quarantine web console (WebSocket) and manage its users",
                                   description="Serve the quarantine web console on WebSocket, or manage its "
                                   "administrators (WebUsersFile).")
    _config_arg(parser, top=True)
    sub = parser.add_subparsers(dest="web_command", metavar="COMMAND")
    parser.set_defaults(func=_run(cmd_serve))
    p = sub.add_parser("serve", help="serve the console until stopped (the default)")
    _config_arg(p)
    p.set_defaults(func=_run(cmd_serve))
    p = sub.add_parser("add-user", help="add an administrator or change their password (asked for, never an argument)")
    _config_arg(p)
    p.add_argument("name", help="user name (letters, digits, . _ @ -)")
    p.set_defaults(func=_run(cmd_add_user))
    p = sub.add_parser("remove-user", help="remove an administrator")
    _config_arg(p)
    p.add_argument("name")
    p.set_defaults(func=_run(cmd_remove_user))
    p = sub.add_parser("users", help="list the administrators")
    _config_arg(p)
    p.set_defaults(func=_run(cmd_users))
    return parser


def _config_arg(parser, top=False):
    # sub-commands must not reset a -c given before them (argparse copies their defaults over)
    parser.add_argument("-c", "--config", default=None if top else argparse.SUPPRESS, help="configuration file (default: $VXGATE_CONFIG, "
                        "%s if it exists, else config/vxgate.ini)" % vxconfig.SYSTEM_CONFIG)


class Failed(Exception):
    def __init__(self, text, status=1):
        super().__init__(text)
        self.status = status


def _run(func):
    def run(args):
        from salmon_app.quarantine.store import QuarantineError
        from salmon_app.web.server import ServeError
        from salmon_app.web.users import UsersError
        try:
            config = vxconfig.load(args.config)
            return func(args, config) or 0
        except vxconfig.ConfigError as exc:
            print("%s: %s" % (PROG, exc), file=sys.stderr)
            return 2
        except (Failed, QuarantineError, ServeError, UsersError) as exc:
            print("%s: %s" % (PROG, exc), file=sys.stderr)
            return getattr(exc, "status", 1)
        except KeyboardInterrupt:
            print("", file=sys.stderr)
            return 130
    return run


def cmd_serve(args, config):
    if config.WebSocket is None:
        raise Failed("WebSocket is empty in %s: the console is off; set WebSocket = 127.0.0.1:8425 "
                     "(or another IP:port) to serve it" % (config.path or "the configuration"), 2)
    from salmon_app import logsetup
    from salmon_app.log import config_secrets, install_redaction
    from salmon_app.web import users
    from salmon_app.web.app import create_app
    from salmon_app.web.server import serve
    logsetup.configure(config)
    install_redaction(config_secrets(config))
    if not users.load(users.path_of(config)):
        print("%s: no administrator in %s yet: add one with `vxgate web add-user NAME`" % (PROG, users.path_of(config)),
              file=sys.stderr)
    serve(config, create_app(config))


def _password():
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise Failed("the two passwords differ; nothing changed")
        return first
    line = sys.stdin.readline()
    if not line:
        raise Failed("no password on standard input; type it at the prompt or pipe it in (one line)")
    return line.rstrip("\r\n")


def cmd_add_user(args, config):
    from salmon_app.web import users
    path = users.path_of(config)
    if not users.NAME_RE.match(args.name):
        raise Failed("bad user name %r: use 1-64 letters, digits, '.', '_', '@' or '-'" % args.name, 2)
    new = users.set_password(path, args.name, _password())
    print("%s: %s %s in %s" % (PROG, "added" if new else "changed the password of", args.name, path))


def cmd_remove_user(args, config):
    from salmon_app.web import users
    path = users.path_of(config)
    users.remove(path, args.name)
    print("%s: removed %s from %s" % (PROG, args.name, path))


def cmd_users(args, config):
    from salmon_app.web import users
    for name in sorted(users.load(users.path_of(config))):
        print(name)
