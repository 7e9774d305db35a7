"""The sandbox: what a hook cannot reach, and the limits it cannot escape or swallow."""
import time

import pytest
from support.hostile import HOOK_REGEX_BOMBS
from support.policy_data import PLAIN

from salmon_app.policy import Envelope, HookError, HookRuntime

ESCAPES = [
    "io.open('/etc/passwd')",
    "os.execute('touch /tmp/pwned')",
    "os.getenv('HOME')",
    "os.exit(1)",
    "require('io')",
    "require('os')",
    "require('python')",
    "python.eval('1')",
    "debug.sethook()",
    "debug.getregistry()",
    "collectgarbage('stop')",
    "package.loadlib('libc.so.6', 'system')",
    "dofile('/etc/passwd')",
    "loadfile('/etc/passwd')",
    "string.dump(function() end)",
    "('').dump(function() end)",
    "load(string.dump(function() end))()",
    "assert(load('\\27Lua\\x54\\0', 'x', 'b'))()",
    "getmetatable('').__index.dump(print)",
    "setmetatable(getmetatable(''), {})",
    "getmetatable(ctx.message).__index('raw')",
    "assert(load('return io', 'x', 't', {}))().open('/etc/passwd')",
    "setmetatable({}, {__gc = function() end})",
]


@pytest.mark.parametrize("code", ESCAPES)
def test_escape_is_a_hook_error(run, code):
    decision = run(code + "\nreturn {action = 'accept'}")
    assert (decision.action, decision.error) == ("tempfail", True), code


def test_only_safe_globals(value):
    names = value("(function() local r = {} for k in pairs(_G) do r[#r + 1] = k end "
                  "table.sort(r) return table.concat(r, ' ') end)()")
    assert names.split() == sorted(
        "_G _VERSION assert coroutine drweb error getmetatable ipairs load math next os "
        "pairs pcall rawequal rawget rawlen rawset require select setmetatable smtp_hook string table "
        "tonumber tostring type unpack utf8 xpcall".split())
    assert value("(function() local r = {} for k in pairs(os) do r[#r + 1] = k end "
                 "table.sort(r) return table.concat(r, ' ') end)()") == "clock date time"


def test_no_python_object_is_reachable(value):
    # Walk everything a hook can get at without calling anything, and the error values of
    # failing host calls: a userdata would be a way back into Python.
    found = value("""(function()
        local seen, bad = {}, {}
        local function walk(v, where)
          if type(v) == 'userdata' then bad[#bad + 1] = where end
          if type(v) ~= 'table' or seen[v] then return end
          seen[v] = true
          for k, x in next, v do walk(k, where .. '[key]') walk(x, where .. '.' .. tostring(k)) end
          local mt = getmetatable(v)
          if mt then walk(mt, where .. '<mt>') end
        end
        local m = ctx.message
        local _ = m.header, m.body.raw, m.part, m.part[1] and m.part[1].body.decoded
        walk(_G, '_G') walk(ctx, 'ctx')
        for _, f in ipairs{function() drweb.regex.search('(', 'x') end,
                           function() drweb.load_set('/nonexistent') end,
                           function() drweb.log('loud', 'x') end} do
          local ok, e = pcall(f)
          walk(e, 'error')
          if type(e) ~= 'string' then bad[#bad + 1] = 'error ' .. type(e) end
        end
        return table.concat(bad, ',')
    end)()""")
    assert found == ""


def test_string_methods_still_work(value):
    assert value("('%s-%d'):format('a', 1) .. ('x'):rep(2) .. ('ABC'):lower()") == "a-1xxabc"


def test_load_of_text_runs_in_the_sandbox(value):
    assert value("load('return os.execute')()") == "nil"
    assert value("load('return 1 + 1')()") == "2"


@pytest.mark.parametrize("code", [
    "while true do end",
    "local co = coroutine.create(function() while true do end end) coroutine.resume(co)",
    "local f = coroutine.wrap(function() while true do end end) pcall(f)",
    "local co = coroutine.create(function() coroutine.yield() while true do end end)"
    " coroutine.resume(co) while true do coroutine.resume(co) end",
    "while true do pcall(function() while true do end end) end",
    "while true do xpcall(function() while true do end end, function() return 'x' end) end",
    "while true do pcall(error, setmetatable({}, {__tostring = function() while true do end end})) end",
    "local t <close> = setmetatable({}, {__close = function() while true do end end}) while true do end",
    "local s = 'x' while true do pcall(string.rep, s, 10) end",
    "table.sort({3, 2, 1, 4, 5}, function(a, b) while true do end end)",
    "local t = {} while true do t[#t + 1] = ('x'):rep(1000) .. #t end",
    "local t = {} while true do pcall(function() t[#t + 1] = ('x'):rep(10000) .. #t end) end",
    "local s = 'x' while true do local ok = pcall(function() s = s .. s end) end",
    # Python callbacks near the memory limit (lupa hangs if a result does not fit).
    "local t = {} while true do t[#t + 1] = ctx.message.part_at('1').path .. #t end",
    "local t = {} while true do t[#t + 1] = ctx.message.body.raw .. #t end",
    "local t = {} while true do pcall(function() t[#t + 1] = ctx.message.raw .. #t end) end",
])
def test_limits_stop_the_hook_and_the_runtime_stays_usable(envelope, code):
    runtime = HookRuntime("function smtp_hook(ctx)\n if ctx.from == 'bad@example.org' then\n"
                          + code + "\n end\n return {action = 'accept'}\nend",
                          memory_limit=16 * 2**20, time_limit=0.3)
    started = time.monotonic()
    decision = runtime.run(Envelope("bad@example.org", ["bob@example.com"]), PLAIN, {})
    assert time.monotonic() - started < 1.5
    assert (decision.action, decision.error) == ("tempfail", True)
    assert decision.reason in ("time limit exceeded", "memory limit exceeded")
    for _ in range(2):
        assert runtime.run(envelope, PLAIN, {}).action == "accept"


def test_loop_at_load_time_is_a_load_error():
    started = time.monotonic()
    with pytest.raises(HookError, match="time limit exceeded"):
        HookRuntime("while true do end function smtp_hook(ctx) end", time_limit=0.2)
    assert time.monotonic() - started < 1.5


def test_globals_persist_within_a_runtime(run, envelope):
    runtime = HookRuntime("n = 0 function smtp_hook(ctx) n = n + 1 "
                          "return {action = 'reject', message = tostring(n)} end")
    assert [runtime.run(envelope, PLAIN, {}).message for _ in range(3)] == ["1", "2", "3"]


def test_message_larger_than_the_memory_limit(envelope):
    runtime = HookRuntime("function smtp_hook(ctx) local n = #ctx.message.raw "
                          "return {action = 'accept'} end", memory_limit=8 * 2**20)
    huge = PLAIN + b"x" * (10 * 2**20)
    assert runtime.run(envelope, huge, {}).reason == "memory limit exceeded"
    assert runtime.run(envelope, PLAIN, {}).action == "accept"


def test_a_result_computed_past_the_limit_is_not_used(envelope):
    # One C call executes no Lua instruction, so the count hook never fires inside it; the
    # hook then returns at once. In the daemon the process is killed; here it runs to its end.
    runtime = HookRuntime("function smtp_hook(ctx) table.move({}, 1, 3e7, 1, {}) "
                          "return {action = 'accept'} end", time_limit=0.05)
    decision = runtime.run(envelope, PLAIN, {})
    assert (decision.action, decision.reason) == ("tempfail", "time limit exceeded")


@pytest.mark.parametrize("pattern, text", HOOK_REGEX_BOMBS)
def test_regex_bombs_answer_at_once(run, pattern, text):
    started = time.monotonic()
    decision = run("return {action = drweb.regex.match([[%s]], %r) and 'reject' or 'accept'}"
                   % (pattern, text))
    assert not decision.error and time.monotonic() - started < 0.5


def test_regexes_on_binary_text(value):
    # RE2 takes UTF-8: bytes that are not UTF-8 match no pattern character, but are no error.
    assert value("tostring(drweb.regex.search('c', 'ab\\255cd')) .. "
                 "tostring(drweb.regex.match('ab.cd', 'ab\\255cd'))") == "truefalse"
