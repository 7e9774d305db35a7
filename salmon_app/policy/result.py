"""What a hook decided: the ``Decision`` type and the strict reading of a hook's result table.

A result table that is not exactly what the API documents (an unknown action, a field of the
wrong type, a misspelt key) is a hook error, not a guess: a typo in a policy must show up in
the log as a temporary failure rather than silently deliver or drop mail. Texts that go into
SMTP replies lose their control characters, so a hook that copies a header into a reply
cannot break the protocol.
"""
import re
from dataclasses import dataclass, field

ACTIONS = ("accept", "reject", "tempfail", "discard", "replycode", "quarantine")
ON_ERROR_ACTIONS = ("tempfail", "accept", "quarantine")
HEADER_OPS = ("add_header_field", "change_header_field")
_KEYS = {"action", "message", "code", "text", "added_recipients", "deleted_recipients",
         "modifications"}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")
_ADDRESS = re.compile(r"[^\s<>\x00-\x1f\x7f]+\Z")


class HookError(Exception):
    """The hook cannot be loaded, or it returned something that is not a valid result."""


@dataclass
class Decision:
    action: str
    message: str = ""
    code: str = ""           # replycode only: a 4xx or 5xx reply code
    text: str = ""           # replycode only: the reply text
    added_recipients: list = field(default_factory=list)
    deleted_recipients: list = field(default_factory=list)
    modifications: list = field(default_factory=list)   # see modify.apply_modifications
    reason: str = ""         # why, when error is True
    error: bool = False


def clean_text(value):
    return _CONTROL.sub(" ", value).strip()


def _string(result, key, default=""):
    value = result.get(key, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise HookError("result field %r must be a string" % key)
    return clean_text(value)


def _addresses(result, key):
    values = result.get(key, [])
    if not isinstance(values, list) or not all(
            isinstance(v, str) and _ADDRESS.match(v) for v in values):
        raise HookError("result field %r must be an array of e-mail addresses" % key)
    return values


def header_name(value):
    if not isinstance(value, str) or not _HEADER_NAME.match(value):
        raise HookError("invalid header field name %r" % (value,))
    return value


def parse_modifications(ops):
    """The modifier operations as dicts, checked (the Lua side checks them when scheduled;
    a result table's ``modifications`` may have been built by hand)."""
    if not isinstance(ops, list):
        raise HookError("'modifications' must be an array, as modifier.modifications() gives")
    parsed = []
    for op in ops:
        kind = op.get("op") if isinstance(op, dict) else None
        if kind in HEADER_OPS:
            value = op.get("value")
            if not isinstance(value, str):
                raise HookError("%s needs a string value" % kind)
            parsed.append({"op": kind, "name": header_name(op.get("name")), "value": value})
        elif kind == "repack":
            path = op.get("path") or None
            if path is not None and not isinstance(path, str):
                raise HookError("repack path must be a string")
            parsed.append({"op": "repack", "path": path})
        else:
            raise HookError("unknown modification %r" % (op,))
    return parsed


_ACCEPT = {"action": "accept"}


def decision_from_result(result, scheduled):
    """Decision for a hook's (plain, converted) result table and its scheduled operations."""
    if result == _ACCEPT and scheduled == []:
        return Decision("accept")       # most mail: what the checks below make of it, at once
    if not isinstance(result, dict):
        raise HookError("smtp_hook must return a result table such as {action = \"accept\"}")
    unknown = set(result) - _KEYS
    if unknown:
        raise HookError("unknown field(s) in the result table: %s"
                        % ", ".join(sorted(map(str, unknown))))
    action = result.get("action")
    if action not in ACTIONS:
        raise HookError("unknown action %r (expected one of %s)" % (action, ", ".join(ACTIONS)))
    decision = Decision(action, message=_string(result, "message"),
                        added_recipients=_addresses(result, "added_recipients"),
                        deleted_recipients=_addresses(result, "deleted_recipients"))
    if action == "replycode":
        decision.code = _string(result, "code")
        if not re.fullmatch(r"[45]\d\d", decision.code):
            raise HookError("replycode needs code = a 4xx or 5xx reply code, not %r"
                            % decision.code)
        decision.text = _string(result, "text")
    # Modifications change what is delivered, so only an accepted message has them.
    ops = parse_modifications(result.get("modifications", scheduled))
    decision.modifications = ops if action == "accept" else []
    return decision
