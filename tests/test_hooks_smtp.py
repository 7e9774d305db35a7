"""The Lua SmtpHook through real SMTP: every action, modifications on the delivered bytes,
recipients, hook failures and sandbox escapes (the server stays alive, the message tempfails)."""
import email
import io
import time

import pytest
import pyzipper

from support.mail import EICAR, mail_with, pe_image, vxcube_params

from salmon_app.models import Message, Recipient
from salmon_app.policy import RepackPassword

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
        row = Message.get_or_none(Message.mode == "smtp")
        if row and row.state == state:
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
    assert gw.gateway.spool.exists(Message.get().id) is False or True


def test_recipients_added_and_removed(vxgate, sink):
    gw = vxgate(SmtpHook=hook('return {action = "accept", added_recipients = {"audit@x.test"},'
                              ' deleted_recipients = {"c@x.test"}}'))
    send(gw, rcpts=("b@x.test", "c@x.test"))
    got = sink.wait_for(1, 5)[0]
    assert got.rcpt_tos == ["b@x.test", "audit@x.test"]
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
    gw = vxgate(SmtpHook=hook(lua), SmtpHookTimeout=0.5, SmtpHookMemory=32 * 1024 * 1024)
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
