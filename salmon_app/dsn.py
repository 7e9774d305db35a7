"""Delivery status notifications (RFC 3464) for recipients the next hop refused for good.

Only what the next hop rejected permanently is bounced, to the envelope sender, from the null
sender, with the original's headers only: a bounce never carries the message (it may be
malware, and the sender is often forged).
"""
import email.utils
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from salmon_app.compose import POLICY, one_line, put, to_bytes


def build(hostname, row, failures, headers):
    """Bytes of a multipart/report bounce about ``row`` for ``failures`` [(address, code, text)]."""
    report = MIMEMultipart("report", report_type="delivery-status", policy=POLICY)
    report["From"] = "MAILER-DAEMON@%s (Mail Delivery System)" % hostname
    put(report, "To", one_line(row.mail_from), placeholder="undisclosed-recipients:;")
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"
    lines = ["This is the mail system at host %s." % hostname, "",
             "Your message (queue id %s) could not be delivered to one or more recipients." % row.id,
             "It has not been returned with this notice.", ""]
    # addresses and the next hop's (multi-line) replies: one line each, here and in the fields
    failures = [(one_line(address), code, one_line(text, limit=900)) for address, code, text in failures]
    lines += ["<%s>: %d %s" % (address, code, text) for address, code, text in failures]
    report.attach(MIMEText("\n".join(lines) + "\n", "plain", "utf-8", policy=POLICY))
    status = MIMEBase("message", "delivery-status", policy=POLICY)
    blocks = [_fields([("Reporting-MTA", "dns; %s" % hostname), ("X-Vxgate-Queue-ID", row.id),
                       ("Arrival-Date", email.utils.formatdate(row.created, localtime=True))])]
    blocks += [_fields([("Final-Recipient", "rfc822; %s" % address), ("Action", "failed"),
                        ("Status", _status(code, text)), ("Diagnostic-Code", "smtp; %d %s" % (code, text))])
               for address, code, text in failures]
    status.set_payload(blocks)
    report.attach(status)
    original = MIMEBase("text", "rfc822-headers", policy=POLICY)
    original.set_payload(headers.decode("utf-8", "replace"))
    report.attach(original)
    return to_bytes(report)


def _fields(pairs):
    block = Message(policy=POLICY)
    for name, value in pairs:
        put(block, name, value)
    return block


def _status(code, text):
    head = text.split(" ", 1)[0]
    if head.count(".") == 2 and head[0] in "245":
        return head
    return "5.0.0" if code >= 500 else "4.0.0"


def notice(hostname, row, what, reason, recipient, *, state="quarantined", verdict=None, action=None, files=()):
    """A plain notice to the administrator about a message vxgate kept (quarantined or held):
    the verdict the decision was made on, each file's verdict, and the commands to go on."""
    lines = ["vxgate on %s kept a message (%s)." % (hostname, state), "",
             "What happened: %s" % one_line(what, limit=1000)]
    if reason:
        lines.append("Reason:        %s" % one_line(reason, limit=1000))
    lines += ["", "Queue id:      %s" % row.id, "Envelope from: <%s>" % one_line(row.mail_from),
              "Recipients:    %s" % ", ".join(one_line(a) for a in row.rcpt_to),
              "Subject:       %s" % one_line(row.subject), "Verdict:       %s" % (verdict or row.verdict),
              "Hook action:   %s" % (action or row.action or "-")]
    if files:
        lines += ["Files:"] + ["  %s" % one_line(f, limit=300) for f in files]
    lines += ["", "vxgate quarantine show %s      # the whole history, every file and vxCube task" % row.id,
              "vxgate quarantine release %s   # deliver it after all" % row.id]
    msg = MIMEText("\n".join(lines) + "\n", "plain", "utf-8", policy=POLICY)
    msg["From"] = "MAILER-DAEMON@%s (vxgate)" % hostname
    msg["To"] = recipient
    msg["Subject"] = "vxgate: message %s %s" % (row.id, state)
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    return to_bytes(msg)
