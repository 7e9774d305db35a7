"""Result tables: every action, recipients, and the strictness that turns mistakes into errors."""
import pytest

from salmon_app.policy import Decision, HookError, HookRuntime


@pytest.mark.parametrize("table, expected", [
    ("{action = 'accept'}", Decision("accept")),
    ("{action = 'reject', message = 'go away'}", Decision("reject", message="go away")),
    ("{action = 'tempfail', message = 'later'}", Decision("tempfail", message="later")),
    ("{action = 'discard'}", Decision("discard")),
    ("{action = 'quarantine', message = 'held'}", Decision("quarantine", message="held")),
    ("{action = 'replycode', code = '450', text = 'Are you serious?'}",
     Decision("replycode", code="450", text="Are you serious?")),
    ("{action = 'replycode', code = 554, text = 'no'}",
     Decision("replycode", code="554", text="no")),
])
def test_each_action(run, table, expected):
    assert run("return " + table) == expected


def test_recipients_added_and_removed(run):
    decision = run("return {action = 'accept', added_recipients = {'sec@example.com'},"
                   " deleted_recipients = ctx.to}")
    assert decision.added_recipients == ["sec@example.com"]
    assert decision.deleted_recipients == ["bob@example.com", "carol@example.com"]


def test_reply_texts_cannot_break_the_protocol(run):
    decision = run("return {action = 'reject', message = 'a\\r\\n250 ok\\0'}")
    assert decision.message == "a 250 ok"


@pytest.mark.parametrize("code, reason", [
    ("return 'accept'", "must return a result table"),
    ("return nil", "must return a result table"),
    ("return {'accept'}", "must return a result table"),
    ("return {action = 'bounce'}", "unknown action 'bounce'"),
    ("return {action = 'accept', mesage = 'typo'}", "unknown field(s) in the result table: mesage"),
    ("return {action = 'reject', message = {}}", "'message' must be a string"),
    ("return {action = 'reject', message = tostring}", "'message' must be a string"),
    ("return {action = 'reject', message = function() end}", "'message' must be a string"),
    ("ctx.modifier.repack_password = {} return {action = 'accept'}", "must be a string"),
    ("return {action = 'replycode', code = '250', text = 'x'}", "4xx or 5xx"),
    ("return {action = 'accept', added_recipients = 'a@b'}", "array of e-mail addresses"),
    ("return {action = 'accept', added_recipients = {'a b@c'}}", "array of e-mail addresses"),
    ("return {action = 'accept', modifications = {{op = 'rm_rf'}}}", "unknown modification"),
    ("error('boom')", "SmtpHook:2: boom"),
    ("local x = nil; return x.y", "attempt to index a nil value"),
    ("error({})", "table: "),
])
def test_malformed_results_are_hook_errors(run, code, reason):
    decision = run(code)
    assert (decision.action, decision.error) == ("tempfail", True)
    assert reason in decision.reason


def test_on_error_accept(run):
    decision = run("error('boom')", on_error="accept")
    assert (decision.action, decision.error, decision.modifications) == ("accept", True, [])


def test_on_error_is_checked():
    with pytest.raises(ValueError, match="on_error"):
        HookRuntime("function smtp_hook(ctx) end", on_error="reject")


def test_modifications_only_come_with_accept(run):
    code = "ctx.modifier.add_header_field('X-A', '1'); return {action = '%s'}"
    assert run(code % "accept").modifications == [
        {"op": "add_header_field", "name": "X-A", "value": "1"}]
    assert run(code % "discard").modifications == []


def test_returned_modifications_replace_the_scheduled_ones(run):
    decision = run("""
        local m = ctx.modifier
        m.add_header_field('X-A', '1')
        local list = m.modifications()
        m.add_header_field('X-B', '2')
        return {action = 'accept', modifications = list}""")
    assert [op["name"] for op in decision.modifications] == ["X-A"]


@pytest.mark.parametrize("code, reason", [
    ("ctx.modifier.add_header_field('Bad Name', 'x')", "invalid header field name"),
    ("ctx.modifier.add_header_field('X-A', {})", "must be a string"),
    ("ctx.modifier.repack('9.9')", "no MIME part at path '9.9'"),
])
def test_modifier_checks_its_arguments(run, code, reason):
    decision = run(code + "; return {action = 'accept'}")
    assert decision.error and reason in decision.reason


def test_load_errors_raise():
    with pytest.raises(HookError, match="SmtpHook:1:"):
        HookRuntime("function smtp_hook(ctx) return {action = } end")
    with pytest.raises(HookError, match="must define a global function smtp_hook"):
        HookRuntime("local function smtp_hook(ctx) end")
    with pytest.raises(HookError, match="cannot read"):
        HookRuntime("/nonexistent/hook.lua")
