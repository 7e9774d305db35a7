"""Administrator notices (SmtpAdminAddress) over real SMTP: sent whenever vxgate keeps a message
it already answered for, and telling the verdict the decision was made on, each file's
verdict, the hook's action and the command to look further."""
import email

import pytest

from salmon_app.storage.models import Message
from support.mail import EICAR, mail_with, pe_image, vxcube_params

from test_relay import wait_state

ADMIN = "postmaster@corp.test"
HOOK = """
function smtp_hook(ctx)
  if ctx.vxcube.verdict == "suspicious" then return {action = "reject", message = "suspicious file"} end
  if ctx.vxcube.verdict == "dangerous" then return {action = "quarantine", message = "malware"} end
  return {action = "accept"}
end
"""


def notice_for(sink, queue_id):
    for message in sink.wait_for(1, 20):
        if message.rcpt_tos == [ADMIN] and queue_id.encode() in message.data:
            return email.message_from_bytes(message.data)
    raise AssertionError("no notice about %s" % queue_id)


@pytest.mark.parametrize("name, content, verdict, action", [
    ("notes.exe", pe_image(b"VXGATE-TEST-SUSPICIOUS"), "suspicious", "reject"),   # reject after the 250
    ("invoice.exe", pe_image(EICAR), "dangerous", "quarantine"),                  # quarantine in the background
])
def test_notice_after_the_early_250_tells_the_real_verdict(vxgate, sink, vxsim, name, content, verdict, action):
    gw = vxgate(SmtpHook=HOOK, SmtpAdminAddress=ADMIN, SmtpReplyTimeout=0.05, **vxcube_params(vxsim))
    gw.send("mallory@x.test", ["bob@x.test"], mail_with([(name, content)], subject="Quarterly figures"))
    row = wait_state(Message.mode == "smtp", "quarantined", timeout=30)[0]
    assert row.answered and row.verdict == verdict
    notice = notice_for(sink, row.id)
    text = notice.get_payload(decode=True).decode()
    assert notice["Subject"] == "vxgate: message %s quarantined" % row.id
    assert "Verdict:       %s" % verdict in text and "Verdict:       none" not in text
    assert "Hook action:   %s" % action in text
    assert "%s(exe):%s" % (name, verdict) in text
    assert "vxgate quarantine show %s" % row.id in text and "Subject:       Quarterly figures" in text
    assert not [m for m in sink.messages if m.rcpt_tos == ["bob@x.test"]]     # kept, not delivered
