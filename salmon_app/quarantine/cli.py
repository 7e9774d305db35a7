"""The ``vxgate quarantine`` command: list, show, release, export, delete, purge, check, stats.

``register(subparsers)`` adds ``quarantine`` and its sub-commands to an argparse sub-parsers
object (the ``vxgate`` command wires it in); ``main(argv)`` runs them directly
(``python -m salmon_app.quarantine.cli list``). Each sub-command takes ``-c/--config``. Output
is for people by default (aligned columns, one line per action) and ``--json`` where scripts
need it. Errors are one line on stderr, ``vxgate quarantine: ...``; the exit status is 0 on
success, 1 when a message is not found or an action failed, 2 for a usage error. Everything
works while the daemon runs: reads take no lock and writes are short transactions.
"""
import argparse
import os
import sys

import peewee

from salmon_app import config as vxconfig
from salmon_app.storage import models
from salmon_app.quarantine import query, render
from salmon_app.quarantine.store import QuarantineError, Store, normalise_id

PROG = "vxgate quarantine"


class Failed(Exception):
    """Some of the requested actions failed (already reported): exit status 1."""


# ---------------------------------------------------------------- argument types
def _type(func, name):
    def convert(text):
        try:
            return func(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name
    return convert


queue_id_arg = _type(normalise_id, "queue id")
when_arg = _type(query.parse_when, "time")


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number, got %r" % text) from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _choices(known, groups=None, what="value"):
    return _type(lambda text: query.split_choices([text], known, groups, what), what)


def _address(text):
    out = []
    for item in text.split(","):
        item = item.strip().strip("<>")
        if not item:
            continue
        if "@" not in item or any(ch.isspace() or ch in "<>\"" for ch in item):
            raise argparse.ArgumentTypeError("%r is not a mail address" % item)
        out.append(item)
    if not out:
        raise argparse.ArgumentTypeError("empty address")
    return out


def _flatten(lists):
    return [item for sub in (lists or []) for item in sub]


def add_filters(parser):
    group = parser.add_argument_group("filters (combined with AND)")
    group.add_argument("--state", action="append", type=_choices(query.STATES, query.STATE_GROUPS, "state"),
                       metavar="STATE", help="state(s), comma-separated or repeated: %s, or in-flight / final"
                       % ", ".join(query.STATES))
    group.add_argument("--verdict", action="append", type=_choices(query.VERDICTS, None, "verdict"),
                       metavar="VERDICT", help="message verdict(s): %s" % ", ".join(query.VERDICTS))
    group.add_argument("--mode", action="append", type=_choices(query.MODES, None, "mode"),
                       metavar="MODE", help="how it arrived: %s" % ", ".join(query.MODES))
    group.add_argument("--sender", metavar="TEXT", help="envelope sender contains TEXT ('<>': the null sender)")
    group.add_argument("--recipient", metavar="TEXT", help="an envelope recipient contains TEXT")
    group.add_argument("--subject", metavar="TEXT", help="subject contains TEXT (case-insensitive)")
    group.add_argument("--message-id", metavar="TEXT", help="the Message-ID header contains TEXT")
    group.add_argument("--since", type=when_arg, metavar="WHEN",
                       help="received at or after WHEN: 2h, 3d, 1w ago, today, yesterday, or 2026-01-31[T14:00]")
    group.add_argument("--until", type=when_arg, metavar="WHEN", help="received before WHEN (same forms)")
    released = group.add_mutually_exclusive_group()
    released.add_argument("--released", dest="released", action="store_const", const=True,
                          help="only messages released with `vxgate quarantine release`")
    released.add_argument("--not-released", dest="released", action="store_const", const=False,
                          help="only messages never released")


def _flat_filters(args):
    for name in ("state", "verdict", "mode"):
        setattr(args, name, _flatten(getattr(args, name)))
    return query.filters_from(args)


# ---------------------------------------------------------------- commands
def cmd_list(args, store):
    filters = _flat_filters(args)
    rows, total, releases = query.listing(store, filters, args.sort, args.reverse, args.limit)
    if args.json:
        print(query.render_json(rows, total, releases))
    else:
        width = os.get_terminal_size().columns if sys.stdout.isatty() else None
        print("\n".join(query.render_list(rows, total, releases, width)))


def cmd_show(args, store):
    from salmon_app.quarantine import history
    info = history.describe(store, args.id)
    print(render.dumps(info) if args.json else "\n".join(history.render_show(info)))


def cmd_release(args, store):
    from salmon_app.quarantine import release
    filters = _flat_filters(args)
    if args.all_matching:
        if args.ids:
            args._parser.error("give message ids or --all-matching with filters, not both")
        if not filters.given():
            args._parser.error("--all-matching needs at least one filter (for example --state quarantined)")
        ids = [r.id for r in filters.select(models.Message.id).order_by(models.Message.created)]
        if not ids:
            print("no message matches")
            return
    else:
        if not args.ids:
            args._parser.error("give the id of a message to release (or --all-matching with filters)")
        if filters.given():
            args._parser.error("filters select messages only with --all-matching")
        ids = args.ids
    to = _flatten(args.to) or None
    if args.dry_run:
        for queue_id in ids:
            try:
                row = store.lookup(queue_id)
            except QuarantineError as exc:
                _error(exc)
                continue
            reason = release.refuse_reason(store, row, to)
            earlier = store.released([row.id]).get(row.id)
            if reason:
                print("%s: would be refused: %s" % (row.id, reason.split(": ", 1)[1]))
            elif earlier is not None and not args.force:
                print("%s: already released %s by %s; would not be sent again (--force sends it again)"
                      % (row.id, render.when(earlier.time), render.clean(earlier.user)))
            else:
                print("%s: would be released to %s" % (row.id, ", ".join(to or row.rcpt_to)))
        print("%d message(s) selected; nothing sent (--dry-run)" % len(ids))
        return
    relay = release.make_relay(store.config)
    failed = 0
    try:
        for queue_id in ids:
            try:
                outcome = release.release(store, queue_id, relay, to=to, force=args.force)
            except QuarantineError as exc:
                _error(exc)
                failed += 1
                continue
            line, is_error = release.describe(outcome)
            if is_error:
                _error(line)
                failed += 1
            else:
                print(line)
    finally:
        relay.close()
    if len(ids) > 1:
        print("%d released or already released, %d failed" % (len(ids) - failed, failed))
    if failed:
        raise Failed()


def cmd_export(args, store):
    from salmon_app.quarantine import export
    if args.output is None and sys.stdout.isatty():
        raise QuarantineError("not writing a raw message to the terminal: use -o FILE, a pipe, "
                              "or -o - to insist", status=2)
    size = export.export(store, args.id, args.output)
    if args.output not in (None, "-"):
        print("%s: %d bytes written to %s" % (args.id, size, args.output), file=sys.stderr)


def cmd_delete(args, store):
    from salmon_app.quarantine.remove import remove_messages
    removed, skipped = remove_messages(store, args.ids, allow_in_flight=args.force)
    for item in removed:
        files = "%d file%s" % (item.files, "s" if item.files > 1 else "") if item.files else "no file"
        print("%s: deleted (%s, %s)" % (item.queue_id, item.state, files))
    for queue_id, state in skipped.items():
        if state is None:
            _error("%s: no such message" % queue_id)
        else:
            _error("%s: still in flight (state %s): not deleted; --force deletes it anyway "
                   "(vxgate will then never deliver it)" % (queue_id, state))
    if skipped:
        raise Failed()


def cmd_purge(args, store):
    from salmon_app.quarantine import expire
    states = _flatten(args.state)
    busy = [s for s in states if s in models.OWNED]
    if busy:
        args._parser.error("%s: purge never removes messages in flight" % ", ".join(busy))
    summary = expire.purge(store, args.older_than, states or None, dry_run=args.dry_run)
    if args.json:
        summary["dry_run"] = args.dry_run
        print(render.dumps(summary))
        return
    verb = "would purge" if args.dry_run else "purged"
    detail = ", ".join("%s %d" % kv for kv in sorted(summary["by_state"].items()))
    print("%s %d message%s received before %s%s: %d file%s, %s" % (
        verb, summary["messages"], "" if summary["messages"] == 1 else "s", render.when(args.older_than),
        " (%s)" % detail if detail else "", summary["files"], "" if summary["files"] == 1 else "s",
        render.amount(summary["bytes"])))
    if args.dry_run and summary["messages"]:
        print("(list them with: vxgate quarantine list --until %s --state %s)"
              % (render.when(args.older_than).replace(" ", "T"), ",".join(states) or "final"))


def cmd_check(args, store):
    from salmon_app.quarantine import check
    findings, counts = check.check(store, repair=args.repair)
    print("\n".join(check.render_check(findings, counts, args.repair)))
    if counts["problems"] > counts["repaired"]:
        raise Failed()


def cmd_stats(args, store):
    from salmon_app.quarantine import stats
    since = None if args.since == "all" else when_arg(args.since)
    data = stats.stats(store, since)
    label = None
    try:
        vxconfig.parse_duration(args.since)
        label = args.since
    except ValueError:
        pass
    print(render.dumps(data) if args.json else "\n".join(stats.render_stats(data, label)))


def _since_arg(text):
    if text.strip().lower() == "all":
        return "all"
    when_arg(text)
    return text


# ---------------------------------------------------------------- parser
def register(subparsers):
    """Add ``quarantine`` and its sub-commands to ``subparsers``; returns the new parser."""
    description = ("Look at and act on the quarantine: every message vxgate holds (file + record). "
                   "Works while the daemon runs.")
    parser = subparsers.add_parser("quarantine", help="list, inspect, release, export, delete and expire messages",
                                   description=description)
    build(parser)
    from salmon_app.quarantine import queue
    queue.register(subparsers, _runner, queue_id_arg)
    return parser


def build(parser):
    sub = parser.add_subparsers(dest="quarantine_command", metavar="COMMAND", required=True)

    def child(name, func, help_text, epilog=None):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-c", "--config", help="configuration file (default: $VXGATE_CONFIG or config/vxgate.ini)")
        p.set_defaults(func=_runner(func), _parser=p)
        return p

    p = child("list", cmd_list, "list messages, newest first",
              "examples:\n  vxgate quarantine list --state quarantined --since 1d\n"
              "  vxgate quarantine list --verdict dangerous,suspicious --sort size --limit 20\n"
              "  vxgate quarantine list --recipient @example.com --json | jq -r '.messages[].id'")
    add_filters(p)
    p.add_argument("--sort", choices=query.SORT_KEYS, default="created",
                   help="created (newest first), size (largest first), state or sender (A-Z); default created")
    p.add_argument("-r", "--reverse", action="store_true", help="reverse the order")
    p.add_argument("-n", "--limit", type=_positive, metavar="N", help="show at most N messages")
    p.add_argument("--json", action="store_true", help="JSON for scripts: {total, count, messages: [...]}")

    p = child("show", cmd_show, "show everything about one message: envelope, client, headers, MIME parts, "
              "verdicts, recipients and history")
    p.add_argument("id", type=queue_id_arg, help="queue id")
    p.add_argument("--json", action="store_true", help="JSON for scripts")

    p = child("release", cmd_release, "re-send messages to the next hop (SmtpSenderRelay) without checking them again",
              "The stored original bytes go to the original recipients (or --to). A message is released\n"
              "once: releasing it again only says when it was released, unless --force.\n\n"
              "examples:\n  vxgate quarantine release 3D4A9076761D5EFE\n"
              "  vxgate quarantine release 3D4A9076761D5EFE --to analyst@example.com\n"
              "  vxgate quarantine release --all-matching --state quarantined --sender @partner.example --dry-run")
    p.add_argument("ids", nargs="*", type=queue_id_arg, metavar="ID", help="queue id(s)")
    p.add_argument("--to", action="append", type=_address, metavar="ADDR",
                   help="send to ADDR (repeatable or comma-separated) instead of the original recipients")
    p.add_argument("--force", action="store_true", help="send again even if it was released before")
    p.add_argument("--all-matching", action="store_true", help="release every message the filters select")
    p.add_argument("--dry-run", action="store_true", help="say what would be released; send nothing")
    add_filters(p)

    p = child("export", cmd_export, "write the original .eml bytes of a message to stdout or a file")
    p.add_argument("id", type=queue_id_arg, help="queue id")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE (mode 0600) instead of stdout ('-': stdout, even a terminal)")

    p = child("delete", cmd_delete, "delete messages: file and records together")
    p.add_argument("ids", nargs="+", type=queue_id_arg, metavar="ID", help="queue id(s)")
    p.add_argument("--force", action="store_true",
                   help="also delete messages in flight (vxgate will then never deliver them)")

    p = child("purge", cmd_purge, "delete finished messages received before a point in time",
              "Never removes messages in flight. Automatic expiry (DeliveredRetention,\n"
              "QuarantineRetention) does the same in the daemon.\n\n"
              "examples:\n  vxgate quarantine purge --older-than 30d --dry-run\n"
              "  vxgate quarantine purge --older-than 2026-01-01 --state delivered,discarded")
    p.add_argument("--older-than", type=when_arg, required=True, metavar="WHEN",
                   help="received before WHEN: 30d, 12h, or a date such as 2026-01-31")
    p.add_argument("--state", action="append", type=_choices(query.STATES, {"final": models.FINAL}, "state"),
                   metavar="STATE", help="only these final state(s), comma-separated or repeated")
    p.add_argument("--dry-run", action="store_true", help="count what would be purged; delete nothing")
    p.add_argument("--json", action="store_true", help="JSON for scripts")

    p = child("check", cmd_check, "check that records and files agree (and --repair what does not)",
              "Reports records whose file is missing, files without a record, files kept against\n"
              "their record and rows left without their message. Exit status 1 when problems remain.")
    p.add_argument("--repair", action="store_true",
                   help="record missing files, delete orphan rows, remove orphan files older than a minute")

    p = child("stats", cmd_stats, "counts by state, verdict and mode, storage, and uploads saved by the cache")
    p.add_argument("--since", type=_since_arg, default="7d", metavar="WHEN",
                   help="messages received since WHEN (default 7d; 'all' for every record)")
    p.add_argument("--json", action="store_true", help="JSON for scripts")
    return parser


def _error(exc):
    print("%s: %s" % (PROG, exc), file=sys.stderr)


def _runner(func, prog=PROG):
    def _error(exc):      # errors name the command the user typed
        print("%s: %s" % (prog, exc), file=sys.stderr)

    def run(args):
        try:
            sys.stdout.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
        store = None
        try:
            try:
                config = vxconfig.load(args.config)
            except vxconfig.ConfigError as exc:
                _error(exc)
                return 2
            store = Store(config)
            func(args, store)
            sys.stdout.flush()
            return 0
        except QuarantineError as exc:
            _error(exc)
            return exc.status
        except Failed:
            return 1
        except peewee.OperationalError as exc:
            _error("database %s: %s" % (config.DatabasePath, exc))
            return 1
        except BrokenPipeError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except OSError:
                pass
            return 141
        except KeyboardInterrupt:
            print("", file=sys.stderr)
            return 130
        finally:
            if store is not None:
                store.close()
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Look at and act on the vxgate quarantine.")
    build(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
