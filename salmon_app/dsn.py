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


def build(hostname, row, failures, headers):
    """Bytes of a multipart/report bounce about ``row`` for ``failures`` [(address, code, text)]."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@%s (Mail Delivery System)" % hostname
    report["To"] = row.mail_from
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"
    lines = ["This is the mail system at host %s." % hostname, "",
             "Your message (queue id %s) could not be delivered to one or more recipients." % row.id,
             "It has not been returned with this notice.", ""]
    lines += ["<%s>: %d %s" % (address, code, text) for address, code, text in failures]
    report.attach(MIMEText("\n".join(lines) + "\n", "plain", "utf-8"))
    status = MIMEBase("message", "delivery-status")
    blocks = [_fields([("Reporting-MTA", "dns; %s" % hostname), ("X-Vxgate-Queue-ID", row.id),
                       ("Arrival-Date", email.utils.formatdate(row.created, localtime=True))])]
    blocks += [_fields([("Final-Recipient", "rfc822; %s" % address), ("Action", "failed"),
                        ("Status", _status(code, text)), ("Diagnostic-Code", "smtp; %d %s" % (code, text))])
               for address, code, text in failures]
    status.set_payload(blocks)
    report.attach(status)
    original = MIMEBase("text", "rfc822-headers")
    original.set_payload(headers.decode("utf-8", "replace"))
    report.attach(original)
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _fields(pairs):
    block = Message()
    for name, value in pairs:
        block[name] = value
    return block


def _status(code, text):
    head = text.split(" ", 1)[0]
    if head.count(".") == 2 and head[0] in "245":
        return head
    return "5.0.0" if code >= 500 else "4.0.0"


def notice(hostname, row, what, reason, recipient):
    """A plain notice to the administrator about a message vxgate kept in quarantine."""
    from email.mime.text import MIMEText
    lines = ["vxgate on %s kept a message in quarantine." % hostname, "",
             "What happened: %s" % what]
    if reason:
        lines.append("Reason:        %s" % reason)
    lines += ["", "Queue id:      %s" % row.id, "Envelope from: <%s>" % row.mail_from,
              "Recipients:    %s" % ", ".join(row.rcpt_to), "Subject:       %s" % row.subject,
              "Verdict:       %s" % row.verdict, "",
              "vxgate quarantine show %s      # the whole history" % row.id,
              "vxgate quarantine release %s   # deliver it after all" % row.id]
    msg = MIMEText("\n".join(lines) + "\n", "plain", "utf-8")
    msg["From"] = "MAILER-DAEMON@%s (vxgate)" % hostname
    msg["To"] = recipient
    msg["Subject"] = "vxgate: message %s quarantined" % row.id
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
