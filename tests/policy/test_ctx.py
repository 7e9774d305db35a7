"""What a hook sees in ctx: envelope, the MIME tree, vxCube results, and the drweb module."""
import hashlib
import logging

import pytest
from support.policy_data import EXE, PLAIN, analysis, multipart

MESSAGE = multipart([("report.pdf", b"%PDF-1.4 fake"), ("Setup.EXE", EXE)],
                    subject="=?utf-8?b?0J/RgNC40LLQtdGC?= there")


@pytest.mark.parametrize("expression, expected", [
    ("ctx.from", "alice@example.org"),
    ("table.concat(ctx.to, ',')", "bob@example.com,carol@example.com"),
    ("ctx.helo", "mx.example.org"),
    ("ctx.queue_id", "Q1"),
    ("ctx.sender.hostname .. ' ' .. ctx.sender.ip .. ' ' .. ctx.sender.port"
     " .. ' ' .. ctx.sender.family", "mx.example.org 192.0.2.1 2525 ipv4"),
])
def test_envelope(value, expression, expected):
    assert value(expression) == expected


@pytest.mark.parametrize("expression, expected", [
    ("ctx.message.header.value('subject')", "Привет there"),
    ("ctx.message.header.value('X-Missing')", "nil"),
    ("ctx.message.header.field[3].name .. '=' .. ctx.message.header.field[3].value",
     "To=bob@example.com"),
    ("ctx.message.header.search([[^subject: привет]], {ignore_case = true})", "true"),
    ("ctx.message.header.search('^X-Nothing')", "false"),
    ("#ctx.message.part", "3"),
    ("ctx.message.path", ""),
    ("ctx.message.content_type", "multipart/mixed"),
    ("ctx.message.part[1].body.text", "Hello Bob,\r\nsee attached."),
    ("ctx.message.part[3].name", "Setup.EXE"),
    ("ctx.message.part[3].content_type", "application/octet-stream"),
    ("#ctx.message.part[3].body.decoded", str(len(EXE))),
    ("ctx.message.part[3].body.sha256", hashlib.sha256(EXE).hexdigest()),
    ("ctx.message.part[3].body.md5", hashlib.md5(EXE).hexdigest()),
    ("ctx.message.part[3].body.text", "nil"),
    ("ctx.message.part_at('3') == ctx.message.part[3]", "true"),
    ("ctx.message.part_at('7')", "nil"),
    ("ctx.message.search('see attached')", "true"),
    ("ctx.message.part[1].body.search({'nothing', 'Hello'})", "true"),
    ("ctx.message.has_file{name_re = [[.*\\.exe]]}", "true"),
    ("ctx.message.has_file{name_re = [[.*\\.doc]]}", "false"),
    ("ctx.message.has_part()", "true"),
    ("#ctx.message.raw", str(len(MESSAGE))),
])
def test_message(value, expression, expected):
    assert value(expression, MESSAGE) == expected


@pytest.mark.parametrize("iterator, expected", [
    ("parts()", ",1,2,3"),
    ("leaf_parts()", "1,2,3"),
    ("files()", "2,3"),
    ("attachments()", "2,3"),
    ("text_parts()", "1"),
    ("attachments{name_re = [[.*\\.exe]]}", "3"),
    ("attachments{name_re_not = [[.*\\.exe]]}", "2"),
])
def test_iterators(value, iterator, expected):
    code = ("(function() local r = {} for part, path in ctx.message.%s do "
            "assert(part.path == path) r[#r + 1] = path end return table.concat(r, ',') end)()"
            % iterator)
    assert value(code, MESSAGE) == expected


def test_iterator_filters_are_checked(run):
    decision = run("for p in ctx.message.files{category = 'x'} do end", MESSAGE)
    assert decision.error and "unknown filter 'category'" in decision.reason


def test_single_part_message_is_part_1(value):
    assert value("ctx.message.path .. #ctx.message.part .. ctx.message.body.text", PLAIN) \
        == "10Just text.\r\n"
    assert value("ctx.message.part_at('1') == ctx.message", PLAIN) == "true"


def test_attached_message_numbering(value):
    inner = multipart([("inner.exe", EXE)], eol=b"\n")
    raw = (b"From: a@example.org\nContent-Type: multipart/mixed; boundary=outer\n\n--outer\n"
           b"Content-Type: text/plain\n\nhi\n--outer\nContent-Type: message/rfc822\n\n"
           + inner + b"--outer--\n")
    paths = ("(function() local r = {} for p, path in ctx.message.files() do "
             "r[#r + 1] = path .. '=' .. p.name end return table.concat(r, ',') end)()")
    assert value(paths, raw) == "2.2=inner.exe"


def test_message_is_parsed_only_when_used(run):
    # Not a MIME message at all: a hook that does not look at it must not notice.
    assert not run("return {action = 'accept'}", b"\x00\xff garbage").error


def test_vxcube(value):
    result = analysis("dangerous", [("2", "report.pdf", "clean"), ("3", "Setup.EXE", "dangerous")])
    assert value("ctx.vxcube.verdict", MESSAGE, result) == "dangerous"
    assert value("#ctx.vxcube.files", MESSAGE, result) == "2"
    assert value("ctx.vxcube.has_verdict('suspicious')", MESSAGE, result) == "true"
    assert value("ctx.vxcube.counts.dangerous .. ctx.vxcube.counts.clean", MESSAGE, result) == "11"
    assert value("ctx.vxcube.files[2].maliciousness", MESSAGE, result) == "90"
    assert value("ctx.message.part[3].vxcube.name", MESSAGE, result) == "Setup.EXE"
    assert value("ctx.message.part[1].vxcube", MESSAGE, result) == "nil"
    task = "ctx.vxcube.files[2].tasks[1]"
    assert value(task + ".verdict .. ' ' .. %s.vxcube_verdict .. ' ' .. %s.rules.malicious[1]"
                 % (task, task), MESSAGE, result) == "dangerous malware1 Trojan"
    assert value("ctx.vxcube.files[1].has_verdict('clean')", MESSAGE, result) == "true"


def test_vxcube_not_analysed(value):
    assert value("ctx.vxcube.verdict .. #ctx.vxcube.files .. "
                 "tostring(ctx.vxcube.has_verdict('clean'))") == "none0false"


def test_a_hook_that_changes_ctx_changes_nothing_the_next_message_sees(envelope):
    """ctx is built afresh for each message (the view of "nothing analysed" is made once, as
    plain data, and copied into new Lua tables each time)."""
    from salmon_app.policy import HookRuntime
    hook = HookRuntime("function smtp_hook(ctx)\n"
                       "ctx.modifier.add_header_field('X-Seen', ctx.vxcube.verdict .. ctx.vxcube.counts.none\n"
                       "  .. #ctx.vxcube.files .. ctx.sender.ip)\n"
                       "ctx.vxcube.verdict, ctx.vxcube.counts.none = 'dangerous', 99\n"
                       "ctx.vxcube.files[1], ctx.sender.ip = {}, '203.0.113.9'\n"
                       "return {action = 'accept'}\nend")
    seen = [hook.run(envelope, PLAIN, {}).modifications[0]["value"] for _ in range(3)]
    assert seen == ["none00192.0.2.1"] * 3


def test_vxcube_unknown_verdict_is_an_error(run):
    decision = run("return ctx.vxcube.has_verdict('evil')")
    assert decision.error and "unknown verdict 'evil'" in decision.reason


def test_failed_task_is_unchecked(value):
    result = analysis("unchecked", [("1", "x.exe", "unchecked")])
    result["files"][0]["tasks"][0].update(status="failed", verdict=None)
    assert value("ctx.vxcube.files[1].tasks[1].verdict", PLAIN, result) == "unchecked"


def test_unchecked_causes(value):
    result = analysis("dangerous", [("2", "report.pdf", "unchecked"), ("3", "Setup.EXE", "dangerous")])
    result["files"][0]["reason"] = "encrypted: password-protected zip"
    result.update(hold_fallback="accept")
    assert value("ctx.vxcube.files[1].cause .. ' ' .. ctx.vxcube.files[1].reason", MESSAGE, result) \
        == "encrypted encrypted: password-protected zip"
    assert value("'[' .. ctx.vxcube.files[2].cause .. ']'", MESSAGE, result) == "[]"
    assert value("ctx.vxcube.cause .. ' ' .. ctx.vxcube.cause_kind", MESSAGE, result) == "encrypted sender"
    assert value("ctx.message.part[2].vxcube.cause", MESSAGE, result) == "encrypted"
    assert value("tostring(ctx.vxcube.hold_expired) .. ctx.vxcube.held .. ctx.vxcube.hold_fallback",
                 MESSAGE, result) == "false0.0accept"
    # an outage that has lasted: what the analysis measured reaches the hook
    outage = analysis("unchecked", [("3", "Setup.EXE", "unchecked")])
    outage["files"][0]["reason"] = "quota: the vxCube licence has no uploads left"
    outage.update(held=7200.5, hold_expired=True)
    assert value("ctx.vxcube.cause .. ' ' .. ctx.vxcube.cause_kind .. ' ' .. ctx.vxcube.held .. ' '"
                 " .. tostring(ctx.vxcube.hold_expired)", MESSAGE, outage) == "quota outage 7200.5 true"


def test_no_cause_without_unchecked(value):
    assert value("'[' .. ctx.vxcube.cause .. ctx.vxcube.cause_kind .. ']'") == "[]"


# --- drweb -------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("drweb.regex.search('b.b', 'to bob@x')", "true"),
    ("drweb.regex.match('b.b', 'to bob@x')", "false"),
    ("drweb.regex.match({'x', '.*@EXAMPLE\\\\.org'}, ctx.from, drweb.regex.ignore_case)",
     "true"),
    ("drweb.regex.match('.*@EXAMPLE\\\\.org', ctx.from, {ignore_case = true})", "true"),
    ("drweb.regex.match('.*@EXAMPLE\\\\.org', ctx.from)", "false"),
    ("require('drweb.regex') == drweb.regex and require('drweb') == drweb", "true"),
])
def test_regex(value, expression, expected):
    assert value(expression) == expected


def test_regex_errors(run):
    decision = run("drweb.regex.search('(', 'x')")
    assert decision.error and decision.reason.startswith("SmtpHook:2: invalid regular expression")


def test_lists(tmp_path, envelope):
    from salmon_app.policy import HookRuntime
    (tmp_path / "allow.txt").write_text("# trusted\nalice@example.org\n\n  bob@example.com  \n")
    hook = tmp_path / "hook.lua"
    hook.write_text("""
        local set, array = drweb.load_set("allow.txt"), drweb.load_array("allow.txt")
        function smtp_hook(ctx)
          return {action = 'reject', message = tostring(set[ctx.from]) .. #array .. array[2]}
        end""")
    assert HookRuntime(str(hook)).run(envelope, PLAIN, {}).message == "true2bob@example.com"


def test_logging(run, caplog):
    caplog.set_level(logging.DEBUG, logger="vxgate.hook")
    run("drweb.notice('hello'); drweb.log('error', 42); drweb.debug(nil)"
        "; return {action = 'accept'}")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("NOTICE", "Q1: hello"), ("ERROR", "Q1: 42"), ("DEBUG", "Q1: nil")]
    decision = run("drweb.log('loud', 'x')")
    assert decision.error and "unknown log level" in decision.reason


def test_xforward_ipv6_prefix_is_not_shown_to_hooks():
    from salmon_app.policy.context import envelope_view
    from salmon_app.policy import Envelope
    view = envelope_view(Envelope(mail_from="a@x.test", rcpt_to=["b@x.test"],
                                  client={"ip": "IPV6:2001:db8::1", "port": "25"}))
    assert view[b"sender"][b"ip"] == b"2001:db8::1" and view[b"sender"][b"family"] == b"ipv6"
