"""`vxgate reload` on a real daemon: the file is re-read, the new hook and live limits apply at
once, what needs a restart is named (in the output and the log), a broken file changes nothing.

Before, `reload-hooks` validated the new SmtpHook path but the daemon reloaded the old one,
and a suspicious message was delivered instead of quarantined.
"""
import os
import signal
import smtplib
import time

import pytest

from test_daemon import SALMON, VXGATE, service, wait_port  # noqa: F401  (service is a fixture)

ACCEPT = 'function smtp_hook(ctx) return {action = "accept"} end\n'
REJECT = """function smtp_hook(ctx)
  if string.find(ctx.message.header.value("Subject") or "", "reject me", 1, true) then
    return {action = "reject", message = "the new hook"}
  end
  return {action = "accept"}
end
"""


def write_ini(service, hook, extra=""):
    text = service["ini"].read_text()
    head, _, _ = text.partition("[Quarantine]")
    lines = [line for line in head.splitlines() if not line.startswith(("SmtpHook =", "MetricsSocket"))]
    service["ini"].write_text("\n".join(lines) + "\nSmtpHook = %s\nMetricsSocket =\n%s\n[Quarantine]%s"
                              % (hook, extra, text.partition("[Quarantine]")[2]))


def mail(port, subject, size=0):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: %s\r\n\r\n%s\r\n" % (subject, b"x" * size))


def test_reload_applies_the_new_hook_and_limits_and_names_what_needs_a_restart(service, sink):
    hooks = service["home"] / "config"
    (hooks / "a.lua").write_text(ACCEPT)
    (hooks / "b.lua").write_text(REJECT)
    write_ini(service, hooks / "a.lua")
    started = service["run"](SALMON, "start")
    assert started.returncode == 0, started.stderr
    wait_port(service["port"])
    mail(service["port"], b"reject me")
    assert len(sink.wait_for(1, 10)) == 1                 # hook a accepts it

    write_ini(service, hooks / "b.lua", "SmtpMaxMessageSize = 2kb\nSmtpWorkers = 2\n")
    reload = service["run"](VXGATE, "reload")
    assert reload.returncode == 0, reload.stderr
    assert "changed SmtpHook, SmtpMaxMessageSize" in reload.stdout, reload.stdout
    assert "restart needed for SmtpWorkers" in reload.stdout
    with pytest.raises(smtplib.SMTPDataError) as refused:
        mail(service["port"], b"reject me")
    assert refused.value.smtp_code == 550 and b"the new hook" in refused.value.smtp_error
    with pytest.raises(smtplib.SMTPSenderRefused) as too_big:      # SIZE > 2 KB, refused at MAIL
        mail(service["port"], b"big", size=3000)
    assert too_big.value.smtp_code == 552
    log = (service["home"] / "logs" / "vxgate.log").read_text()
    assert "configuration reloaded from %s: changed SmtpHook, SmtpMaxMessageSize; restart needed for " \
           "SmtpWorkers" % service["ini"] in log

    # a broken file: refused by the command before any signal, and by the daemon if it gets one
    good = service["ini"].read_text()
    service["ini"].write_text(good + "[MailD]\nSmtpMaxRecipients = many\n")
    broken = service["run"](VXGATE, "reload")
    assert broken.returncode == 2 and "SmtpMaxRecipients" in broken.stderr and "Traceback" not in broken.stderr
    pid = int(service["pid"].read_text())
    os.kill(pid, signal.SIGHUP)
    deadline = time.time() + 15
    log_path = service["home"] / "logs" / "vxgate.log"
    while "reload refused" not in log_path.read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert "reload refused, the running configuration stays" in log_path.read_text()
    mail(service["port"], b"still fine")                   # the daemon runs on as before
    assert len(sink.wait_for(2, 10)) == 2
    refused = service["run"](SALMON, "stop")        # cannot read PidFile: says how to reach it anyway
    assert refused.returncode == 2 and "--pid" in refused.stderr and "Traceback" not in refused.stderr
    assert service["run"](SALMON, "status", "--pid", str(service["pid"])).returncode == 0
    service["ini"].write_text(good)
    stopped = service["run"](SALMON, "stop")
    assert stopped.returncode == 0, stopped.stderr


def test_reload_moves_the_next_hop_and_vxcube_live(vxgate, sink, vxsim):
    from salmon_app.config import SocketAddr
    from salmon_app.sink import SinkServer
    from support.mail import vxcube_params
    gw = vxgate(**vxcube_params(vxsim))
    other = SinkServer()
    other.start()
    try:
        config = gw.gateway.config
        outcome = gw.gateway.reconfigure(config.replace(
            SmtpSenderRelay=SocketAddr("127.0.0.1", other.port), VxcubeTimeout=123.0, SmtpWorkers=7,
            VxcubeFileTypes=["exe"]))
        assert outcome["applied"] == ["VxcubeFileTypes", "VxcubeTimeout", "SmtpSenderRelay"]
        assert outcome["restart_needed"] == ["SmtpWorkers"]
        assert gw.gateway.config.SmtpWorkers == config.SmtpWorkers      # kept until a restart
        assert gw.gateway.checks.analyser.config.VxcubeTimeout == 123.0
        assert gw.gateway.checks.analyser.types == {"exe"}
        import logging
        from salmon_app.log import RedactFilter
        gw.gateway.reconfigure(gw.gateway.config.replace(VxcubeApiKey="a-new-key-after-rotation"))
        for handler in logging.getLogger().handlers:     # reloads add secrets, not filters
            filters = [f for f in handler.filters if isinstance(f, RedactFilter)]
            assert len(filters) == 1 and "a-new-key-after-rotation" in filters[0].secrets
        gw.send("a@x.test", ["b@x.test"], b"Subject: moved\r\n\r\nhello\r\n")
        assert other.wait_for(1, 10)[0].data.endswith(b"hello\r\n") and not sink.messages
    finally:
        other.stop()
