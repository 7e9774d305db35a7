"""/metrics scraped over real HTTP after known mail went through real SMTP: the counter values
(not only their names) match what happened: clean, EICAR through the vxCube emulator, a hook
reject, a dead next hop."""
import smtplib

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from salmon_app.config import SocketAddr
from salmon_app.storage.models import Message
from support.mail import EICAR, mail_with, pe_image, vxcube_params
from support.waiting import wait_until

from test_relay import body, wait_state

HOOK = """
function smtp_hook(ctx)
  if string.find(ctx.message.header.value("Subject") or "", "reject me", 1, true) then
    return {action = "reject", message = "not wanted"}
  end
  return {action = "accept"}
end
"""


def scrape(gw):
    response = requests.get("http://127.0.0.1:%d/metrics" % gw.gateway.metrics.port, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))), 0)


def test_counters_match_the_mail_sent(vxgate, sink, vxsim):
    gw = vxgate(SmtpHook=HOOK, MetricsSocket=SocketAddr("127.0.0.1", 0),
                **vxcube_params(vxsim))
    gw.send("a@x.test", ["b@x.test"], body(1))                                     # clean, no files
    gw.send("a@x.test", ["b@x.test"], mail_with([("invoice.exe", pe_image(EICAR))], subject="tool"))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        gw.send("a@x.test", ["b@x.test"], b"Subject: reject me\r\n\r\nno\r\n")
    assert refused.value.smtp_code == 550
    sink.wait_for(2, 10)
    values = scrape(gw)
    assert value(values, "vxgate_messages_received_total", mode="smtp") == 3
    assert value(values, "vxgate_messages_finished_total", mode="smtp", outcome="delivered") == 2
    assert value(values, "vxgate_messages_finished_total", mode="smtp", outcome="rejected") == 1
    assert value(values, "vxgate_verdicts_total", verdict="dangerous", action="accept") == 1
    assert value(values, "vxgate_verdicts_total", verdict="none", action="accept") == 1
    assert value(values, "vxgate_verdicts_total", verdict="none", action="reject") == 1
    assert value(values, "vxgate_relay_replies_total", destination="smtp", **{"class": "2xx"}) == 2
    assert value(values, "vxgate_stage_workers", stage="check") == gw.gateway.config.SmtpWorkers
    assert value(values, "vxgate_messages_owned", state="deferred") == 0
    assert value(values, "vxgate_oldest_owned_message_age_seconds") == 0
    assert value(values, "vxgate_quarantine_messages") == 3
    assert value(values, "vxgate_storage_failing") == 0
    build = [k for k in values if k[0] == "vxgate_build_info"]
    assert build and dict(build[0][1])["lua"].startswith("Lua 5")

    # the next hop dies: one message deferred, owned, and the failure counted by class
    sink.stop()
    gw.send("a@x.test", ["b@x.test", "c@x.test"], body(2))
    wait_state(Message.state == "deferred", "deferred")
    values = scrape(gw)
    assert value(values, "vxgate_relay_replies_total", destination="smtp", **{"class": "connection"}) >= 2
    assert value(values, "vxgate_messages_owned", state="deferred") == 1
    assert value(values, "vxgate_oldest_owned_message_age_seconds") > 0
    assert value(values, "vxgate_messages_received_total", mode="smtp") == 4
    # the client has its reply and has quit; the session's thread ends a moment later
    wait_until(lambda: value(scrape(gw), "vxgate_smtp_sessions_open", listener="smtp") == 0,
               10, "the session's end counted")


def test_metrics_socket_in_use_leaves_mail_flowing(vxgate, sink):
    first = vxgate(MetricsSocket=SocketAddr("127.0.0.1", 0))
    taken = SocketAddr("127.0.0.1", first.gateway.metrics.port)
    second = vxgate(MetricsSocket=taken)
    assert second.gateway.metrics.server is None
    second.send("a@x.test", ["b@x.test"], body(3))
    assert len(sink.wait_for(1, 10)) == 1


def test_a_unix_path_is_refused_for_metrics():
    from salmon_app import config
    with pytest.raises(config.ConfigError, match="MetricsSocket must be IP:port"):
        config.parse_text("[MailD]\nMetricsSocket = /run/vxgate/metrics.sock\n", "m.ini")


def test_refused_connections_and_protocol_errors_are_counted(vxgate, raw):
    gw = vxgate(SmtpMaxConnections=1, MetricsSocket=SocketAddr("127.0.0.1", 0))
    first = raw(gw.port)
    assert first.cmd(b"BOGUS")[0] == 500
    assert first.cmd(b"MAIL FROM:<a@x.test>")[0] == 503
    import socket
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as second:
        assert second.makefile("rb").readline().startswith(b"421")
    values = scrape(gw)
    assert value(values, "vxgate_smtp_connections_refused_total", listener="smtp") == 1
    assert value(values, "vxgate_smtp_protocol_errors_total", listener="smtp") == 2
    assert value(values, "vxgate_smtp_sessions_open", listener="smtp") == 1


def test_expiry_runs_are_counted(vxgate, sink):
    gw = vxgate(MetricsSocket=SocketAddr("127.0.0.1", 0), DeliveredRetention=0.0)
    gw.send("a@x.test", ["b@x.test"], body(4))
    wait_state(Message.mode == "smtp", "delivered")
    from salmon_app.quarantine.expire import expiry_hook
    expiry_hook(gw.gateway.config, metrics=gw.gateway.metrics)()      # the daemon's runs hourly
    values = scrape(gw)
    assert value(values, "vxgate_expiry_runs_total") >= 1
    assert value(values, "vxgate_expired_messages_total") == 1 and not Message.select().count()


def test_vxcube_requests_uploads_cache_and_unchecked_causes(vxgate, sink, vxsim):
    gw = vxgate(SmtpHook=HOOK, MetricsSocket=SocketAddr("127.0.0.1", 0),
                **vxcube_params(vxsim, VxcubeMaxFiles=2))
    eicar = mail_with([("invoice.exe", pe_image(EICAR))], subject="one")
    gw.send("a@x.test", ["b@x.test"], eicar)
    gw.send("a@x.test", ["b@x.test"], eicar)            # the same file again: the local cache answers
    gw.send("a@x.test", ["b@x.test"], mail_with([("%d.exe" % n, pe_image(b"n%d" % n)) for n in range(3)],
                                                 subject="three"))
    sink.wait_for(3, 30)
    values = scrape(gw)
    assert value(values, "vxgate_vxcube_uploads_total") == 3        # EICAR once, two of the three
    assert value(values, "vxgate_vxcube_cache_hits_total", where="local") == 1
    assert value(values, "vxgate_unchecked_files_total", cause="too-many-files") == 1
    assert value(values, "vxgate_vxcube_analysis_seconds_count") == 3
    assert value(values, "vxgate_vxcube_requests_total", endpoint="samples", status="200") >= 3
    assert value(values, "vxgate_vxcube_request_seconds_count", endpoint="analyses") >= 3
    assert value(values, "vxgate_vxcube_analyses_in_flight") == 0


FAILING_HOOK = """
function smtp_hook(ctx)
  local subject = ctx.message.header.value("Subject") or ""
  if subject == "boom" then error("boom") end
  if subject == "loop" then while true do end end
  return {action = "accept"}
end
"""


def test_hook_run_time_and_failures_by_kind(vxgate, sink):
    gw = vxgate(SmtpHook=FAILING_HOOK, SmtpHookTimeout=0.3, MetricsSocket=SocketAddr("127.0.0.1", 0))
    gw.send("a@x.test", ["b@x.test"], b"Subject: fine\r\n\r\nok\r\n")
    for subject in (b"boom", b"loop"):
        with pytest.raises(smtplib.SMTPDataError) as failed:
            gw.send("a@x.test", ["b@x.test"], b"Subject: " + subject + b"\r\n\r\nx\r\n")
        assert failed.value.smtp_code == 451          # SmtpHookErrorAction = Tempfail
    values = scrape(gw)
    assert value(values, "vxgate_hook_seconds_count") == 3
    assert value(values, "vxgate_hook_failures_total", kind="error") == 1
    assert value(values, "vxgate_hook_failures_total", kind="time limit") == 1
    assert value(values, "vxgate_verdicts_total", verdict="none", action="tempfail") == 2
