"""The Lua SmtpHook through real SMTP: every action, modifications on the delivered bytes,
recipients, hook failures and sandbox escapes (the server stays alive, the message tempfails)."""
import email
import io
import os
import threading
import time

import pytest
import pyzipper

from support.hostile import HOOK_C_CALLS, HOOK_FILE_READS, HOOK_REGEX_BOMBS
from support.mail import EICAR, mail_with, pe_image, vxcube_params
from support.waiting import wait_until

from salmon_app.storage.models import Message, Recipient
from salmon_app.policy import RepackPassword

pytestmark = pytest.mark.both_engines     # each test runs on SQLite and on PostgreSQL

PLAIN = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: Hello\r\nMessage-ID: <h@x.test>\r\n\r\nbody\r\n"


def hook(body):
    return "function smtp_hook(ctx)\n%s\nend\n" % body


def send(gw, data=PLAIN, rcpts=("b@x.test",), sender="a@x.test"):
    """(code, text) of the final reply."""
    with gw.client() as client:
        client.ehlo()
        client.mail(sender)
        for rcpt in rcpts:
            client.rcpt(rcpt)
        code, text = client.data(data)
    return code, text.decode()


def wait_state(state, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = Message.get_or_none((Message.mode == "smtp") & (Message.state == state))
        if row:
            return row
        time.sleep(0.05)
    raise AssertionError([(r.id, r.state) for r in Message.select()])


@pytest.mark.parametrize("lua, code, state, text", [
    ('return {action = "accept"}', 250, "delivered", "next hop"),
    ('return {action = "reject", message = "5.7.1 no thanks"}', 550, "rejected", "no thanks"),
    ('return {action = "tempfail", message = "try later"}', 451, "tempfailed", "4.7.1 try later"),
    ('return {action = "discard"}', 250, "discarded", "discarded"),
    ('return {action = "replycode", code = "452", text = "4.3.1 full"}', 452, "tempfailed", "full"),
    ('return {action = "replycode", code = "554", text = "5.7.0 go away"}', 554, "rejected", "go away"),
    ('return {action = "quarantine", message = "looks odd"}', 250, "quarantined", "quarantine"),
])
def test_each_action_maps_to_its_reply(vxgate, sink, lua, code, state, text):
    gw = vxgate(SmtpHook=hook(lua))
    got_code, got_text = send(gw)
    assert (got_code, state) == (code, wait_state(state).state) and text in got_text
    time.sleep(0.2)
    assert len(sink.messages) == (1 if state == "delivered" else 0)
    if state in ("quarantined", "rejected", "discarded"):
        assert gw.gateway.spool.exists(Message.get().id)       # kept for the administrator
    assert Message.get().action == lua.split('"')[1]


def test_untouched_accept_is_byte_identical_with_default_hook(vxgate, sink):
    gw = vxgate(SmtpHook="config/hooks/default.lua")
    send(gw)
    assert sink.wait_for(1, 5)[0].data == PLAIN


def test_headers_and_subject_changed_on_the_delivered_bytes(vxgate, sink):
    gw = vxgate(SmtpHook=hook('''
        ctx.modifier.add_header_field("X-Policy", "checked by vxgate")
        ctx.modifier.change_header_field("Subject", "[TAG] " .. ctx.message.header.value("Subject"))
        return {action = "accept"}'''))
    send(gw)
    data = sink.wait_for(1, 5)[0].data
    assert b"Subject: [TAG] Hello\r\n" in data and b"X-Policy: checked by vxgate\r\n" in data
    assert data.endswith(b"\r\n\r\nbody\r\n")
    row = wait_state("delivered")
    wait_until(lambda: not gw.gateway.spool.exists(row.id), what="the delivered message's file removed")


def test_recipients_added_and_removed(vxgate, sink):
    gw = vxgate(SmtpHook=hook('return {action = "accept", added_recipients = {"audit@x.test"},'
                              ' deleted_recipients = {"c@x.test"}}'))
    send(gw, rcpts=("b@x.test", "c@x.test"))
    got = sink.wait_for(1, 5)[0]
    assert got.rcpt_tos == ["b@x.test", "audit@x.test"]
    wait_state("delivered")        # the record follows the next hop's 250
    states = {r.address: r.state for r in Recipient.select()}
    assert states == {"b@x.test": "delivered", "c@x.test": "removed", "audit@x.test": "delivered"}


@pytest.mark.parametrize("password", ["None", "Plain(sekrit)", "HMAC(hmac-secret)"])
def test_dangerous_file_repacked_and_archive_opens(vxgate, sink, vxsim, password):
    gw = vxgate(**vxcube_params(vxsim), SmtpHook="config/hooks/default.lua", RepackPassword=password)
    payload = pe_image(EICAR)
    data = mail_with([("invoice.exe", payload), ("fine.exe", pe_image(b"clean"))], subject="Invoice")
    code, text = send(gw, data)
    assert code == 250
    got = sink.wait_for(1, 20)[0].data
    parsed = email.message_from_bytes(got)
    assert parsed["X-Vxgate-Verdict"] == "dangerous"
    zips = [p for p in parsed.walk() if p.get_content_type() == "application/zip"]
    assert len(zips) == 1
    note = "\n".join(p.get_payload(decode=True).decode() for p in parsed.walk()
                     if p.get_content_type() == "text/plain")
    identifier = next(w for w in note.split() if w.startswith(Message.get().id + "-")).strip(".,)(")
    pw = RepackPassword.parse(password).password_for(identifier)
    with pyzipper.AESZipFile(io.BytesIO(zips[0].get_payload(decode=True))) as archive:
        if pw:
            archive.setpassword(pw.encode())
        assert archive.read(archive.namelist()[0]) == payload
    names = [p.get_filename() for p in parsed.walk() if p.get_filename()]
    assert "fine.exe" in names and "invoice.exe" not in names
    # the original stays byte-identical in the quarantine for release/export
    assert gw.gateway.spool.read(Message.get().id) == data if gw.gateway.config.KeepDeliveredMessages else True


def test_suspicious_tagged(vxgate, sink, vxsim):
    gw = vxgate(**vxcube_params(vxsim), SmtpHook="config/hooks/default.lua")
    send(gw, mail_with([("odd.exe", pe_image(b"VXGATE-TEST-SUSPICIOUS"))], subject="Report"))
    parsed = email.message_from_bytes(sink.wait_for(1, 20)[0].data)
    assert parsed["Subject"] == "[SUSPICIOUS] Report" and parsed["X-Vxgate-Verdict"] == "suspicious"


@pytest.mark.parametrize("lua, reason", [
    ('error("boom")', "boom"),
    ('return {action = "explode"}', "action"),
    ('return 42', "table"),
    ('while true do end', "time"),
    ('local co = coroutine.wrap(function() while true do end end) co()', "time"),
    ('pcall(function() while true do end end) return {action="accept"}', "time"),
    ('local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1000) end', "memory"),
    ('io.open("/etc/passwd")', "io"),
    ('os.execute("touch /tmp/vxgate-pwned")', "execute"),
    ('require("os")', "not available"),
    ('return python.eval("1")', "python"),
    ('load(string.dump(function() end))', "dump"),
    ('debug.sethook()', "debug"),
    ('getmetatable("").__index.rep = nil; return {action = "accept", x = getmetatable("").__index.dump()}', ""),
])
def test_hook_failures_and_escapes_tempfail_and_server_lives(vxgate, sink, lua, reason):
    # the memory bomb gets time to reach its limit even on a busy machine (else the clock stops it first)
    gw = vxgate(SmtpHook=hook(lua), SmtpHookTimeout=5.0 if reason == "memory" else 0.5,
                SmtpHookMemory=32 * 1024 * 1024)
    started = time.time()
    code, text = send(gw)
    assert code == 451 and time.time() - started < 10
    row = wait_state("tempfailed")
    assert reason.lower() in row.reason.lower() or not reason
    import os
    assert not os.path.exists("/tmp/vxgate-pwned")
    # the same worker threads go on serving mail
    gw.gateway.config = gw.gateway.config.replace(SmtpHook=hook('return {action = "accept"}'))
    gw.gateway.checks.reload()
    Message.delete().execute()


def test_hook_error_action_accept(vxgate, sink):
    gw = vxgate(SmtpHook=hook('error("broken")'), SmtpHookErrorAction="Accept")
    assert send(gw)[0] == 250
    assert sink.wait_for(1, 5)[0].data == PLAIN


def test_reject_after_answer_becomes_quarantine(vxgate, sink, vxsim):
    vxsim.configure(analysis_time=1.5)
    gw = vxgate(**vxcube_params(vxsim), SmtpReplyTimeout=0.2,
                SmtpHook=hook('if ctx.vxcube.has_verdict("dangerous") then return {action="reject"} end '
                              'return {action="accept"}'), SmtpAdminAddress="postmaster@x.test")
    code, text = send(gw, mail_with([("bad.exe", pe_image(EICAR))]), sender="forged@victim.test")
    assert code == 250
    row = wait_state("quarantined")
    notice = sink.wait_for(1, 10)[0]
    assert notice.rcpt_tos == ["postmaster@x.test"] and row.id.encode() in notice.data
    assert all(m.rcpt_tos != ["forged@victim.test"] for m in sink.messages)   # never a bounce to the sender


def test_reload_keeps_old_hook_on_syntax_error(vxgate, sink, tmp_path):
    path = tmp_path / "hook.lua"
    path.write_text(hook('return {action = "reject", message = "first"}'))
    gw = vxgate(SmtpHook=str(path))
    assert send(gw)[0] == 550
    path.write_text("function smtp_hook(ctx) return {action = ")     # broken
    gw.gateway.checks.reload()
    assert send(gw)[0] == 550          # the old hook is still in force
    path.write_text(hook('return {action = "accept"}'))
    gw.gateway.checks.reload()
    assert send(gw)[0] == 250


def test_changed_inline_hook_reaches_every_worker(vxgate, sink):
    gw = vxgate(SmtpHook=hook('return {action = "tempfail"}'), SmtpWorkers=2)
    for _ in range(4):                       # every check worker builds its runtime
        assert send(gw)[0] == 451
    gw.gateway.config = gw.gateway.config.replace(SmtpHook=hook('return {action = "accept"}'))
    gw.gateway.checks.reload()
    assert [send(gw)[0] for _ in range(4)] == [250] * 4


def test_mail_one_at_a_time_is_answered_by_one_warm_hook_process(vxgate, sink):
    # The pool gives out the hook process given back last: with four workers, sequential
    # mail still meets one Lua state (its global counts the calls), whose caches stay warm.
    gw = vxgate(SmtpWorkers=4, SmtpHook="calls = 0\nfunction smtp_hook(ctx)\n calls = calls + 1\n"
                "ctx.modifier.add_header_field('X-Call', tostring(calls))\n return {action = 'accept'}\nend")
    checks = gw.gateway.checks
    wait_until(lambda: len(checks.idle) == 4, 30, "every worker's hook process started")
    for _ in range(6):
        assert send(gw)[0] == 250
    delivered = sink.wait_for(6, 10)
    assert [email.message_from_bytes(m.data)["X-Call"] for m in delivered] == [str(n) for n in range(1, 7)]
    assert len(checks.processes) == 4      # one started per worker all the same


def test_slow_hooks_run_side_by_side_in_other_hook_processes(vxgate, sink):
    # A worker waits for the warm hook process only when it is due back within moments: two
    # slow calls at once go to two processes (each counts its own calls), not one after the other.
    gw = vxgate(SmtpWorkers=2, SmtpHookTimeout=10, SmtpHook=(
        "calls = 0\nfunction smtp_hook(ctx)\n calls = calls + 1\n"
        " ctx.modifier.add_header_field('X-Call', tostring(calls))\n"
        " local t = os.clock() while os.clock() - t < 0.5 do end\n return {action = 'accept'}\nend"))
    checks = gw.gateway.checks
    wait_until(lambda: len(checks.idle) == 2, 30, "both workers' hook processes started")
    assert send(gw)[0] == 250          # one slow call: calls now take long on average
    senders = [Sender(gw, PLAIN) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
        assert sender.result[0] == 250
    calls = sorted(email.message_from_bytes(m.data)["X-Call"] for m in sink.wait_for(3, 10)[1:])
    assert calls == ["1", "2"]


# --- hostile hooks: regex bombs, C-call loops, file reads (tests/support/hostile.py) -----------

def subject_mail(subject, body=b"body\r\n"):
    return (b"From: a@x.test\r\nTo: b@x.test\r\nSubject: %s\r\nMessage-ID: <%d@x.test>\r\n\r\n"
            % (subject.encode(), abs(hash(subject)))) + body


class Sender(threading.Thread):
    """Sends one message in the background; ``result`` is (code, seconds) once done."""

    def __init__(self, gw, data):
        super().__init__(daemon=True)
        self.gw, self.data, self.result = gw, data, None

    def run(self):
        started = time.monotonic()
        code = send(self.gw, self.data)[0]
        self.result = (code, time.monotonic() - started)


def test_regex_bombs_on_the_subject_stall_nobody(vxgate, sink):
    # Python's re backtracked for seconds on each of these while holding the GIL: every
    # thread of the daemon froze. RE2 answers at once, and the hook accepts both messages.
    patterns = "{%s}" % ", ".join("[[%s]]" % p for p, _ in HOOK_REGEX_BOMBS)
    gw = vxgate(SmtpWorkers=2, SmtpHookTimeout=30, SmtpHook=hook(
        "local subject = ctx.message.header.value('Subject') or ''\n"
        "for _, p in ipairs(%s) do drweb.regex.match(p, subject) drweb.regex.search(p, subject) end\n"
        "return {action = 'accept'}" % patterns))
    assert send(gw, subject_mail("warm-up"))[0] == 250   # both workers' runtimes exist
    attacks = [Sender(gw, subject_mail(text)) for _, text in HOOK_REGEX_BOMBS]
    for attack in attacks:
        attack.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert send(gw, subject_mail("clean"))[0] == 250
    assert time.monotonic() - started < 5
    for attack in attacks:
        attack.join(60)
        assert attack.result[0] == 250
    assert len(sink.wait_for(2 + len(attacks), 10)) == 2 + len(attacks)


@pytest.mark.parametrize("lua", HOOK_C_CALLS)
def test_c_call_loops_fail_within_the_time_limit(vxgate, sink, lua):
    # One C call runs no Lua instructions, so no instruction hook stops it: the worker
    # kills the hook's process at SmtpHookTimeout + 0.5 s and never uses a late result.
    gw = vxgate(SmtpHookTimeout=0.5, SmtpWorkers=1, SmtpHook=hook(
        "if ctx.message.header.value('Subject') == 'attack' then %s end\n"
        "return {action = 'accept'}" % lua))
    assert send(gw, subject_mail("warm-up"))[0] == 250    # the worker's process is running
    started = time.monotonic()
    code, text = send(gw, subject_mail("attack"))
    assert code == 451 and time.monotonic() - started < 0.5 + 0.5 + 1.5
    assert "time limit" in wait_state("tempfailed").reason
    assert send(gw, subject_mail("clean"))[0] == 250      # the same worker, a fresh process
    assert len(sink.wait_for(2, 10)) == 2


def test_a_runaway_hook_holds_one_worker_not_the_others(vxgate, sink):
    gw = vxgate(SmtpHookTimeout=3, SmtpWorkers=2, SmtpHook=hook(
        "if ctx.message.header.value('Subject') == 'attack' then %s end\n"
        "return {action = 'accept'}" % HOOK_C_CALLS[0]))
    attack = Sender(gw, subject_mail("attack"))
    attack.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert send(gw, subject_mail("clean"))[0] == 250
    assert time.monotonic() - started < 2.5 and attack.result is None   # still held
    attack.join(30)
    assert attack.result[0] == 451 and attack.result[1] < 3 + 0.5 + 2
    assert [m.data.count(b"Subject: clean") for m in sink.messages] == [1]


SECRETS = {"VxcubeApiKey": "api-key-SECRET-1", "BccReporterPassword": "bcc-SECRET-2",
           "RepackPassword": "Plain(zip-SECRET-3)"}


@pytest.fixture
def list_dir(tmp_path):
    """<tmp>/hooks/lists with the traps of HOOK_FILE_READS; <tmp>/vxgate.ini holds secrets."""
    ini = tmp_path / "vxgate.ini"
    ini.write_text("[Root]\n" + "".join("%s = %s\n" % kv for kv in SECRETS.items()))
    lists = tmp_path / "hooks" / "lists"
    lists.mkdir(parents=True)
    os.mkfifo(lists / "fifo")
    os.symlink(ini, lists / "escape")
    with open(lists / "big.txt", "wb") as big:
        big.truncate(9 * 2**20)      # sparse: larger than SmtpHookMemory below
    (lists / "allow.txt").write_text("# trusted\n a@x.test \n\nb@x.test\n")
    return lists


def test_hooks_read_lists_from_smtp_hook_lists(vxgate, sink, list_dir):
    gw = vxgate(SmtpHookLists=str(list_dir), SmtpHook=hook(
        "local allow = drweb.load_set('allow.txt')\n"
        "ctx.modifier.add_header_field('X-Allowed', tostring(allow[ctx.from]))\n"
        "return {action = 'accept'}"))
    send(gw)
    assert b"X-Allowed: true\r\n" in sink.wait_for(1, 10)[0].data


@pytest.mark.parametrize("path", HOOK_FILE_READS)
def test_hook_file_reads_outside_the_lists_are_refused(vxgate, sink, list_dir, path):
    path = path.format(ini=list_dir.parent.parent / "vxgate.ini")
    gw = vxgate(SmtpHookLists=str(list_dir), SmtpHookMemory=8 * 2**20, SmtpHookTimeout=2,
                SmtpHook=hook(
        "if ctx.message.header.value('Subject') == 'caught' then\n"
        "  local ok, lines = pcall(drweb.load_array, %r)\n"
        "  ctx.modifier.add_header_field('X-Leak', ok and table.concat(lines, ' ') or lines)\n"
        "  return {action = 'accept'}\n"
        "end\n"
        "ctx.modifier.add_header_field('X-Leak', table.concat(drweb.load_array(%r), ' '))\n"
        "return {action = 'accept'}" % (path, path)))
    started = time.monotonic()
    code, _ = send(gw, subject_mail("plain"))
    assert code == 451 and time.monotonic() - started < 5
    reason = wait_state("tempfailed").reason
    assert any(why in reason for why in ("only from", "not a regular file", "larger than")), reason
    Message.delete().execute()
    assert send(gw, subject_mail("caught"))[0] == 250
    data = sink.wait_for(1, 10)[0].data
    assert b"X-Leak: " in data and not any(s.encode() in data for s in SECRETS.values())
    assert b"SECRET" not in data and b"root:" not in data
