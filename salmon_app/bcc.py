"""BCC mode: accept blind copies for the monitoring addresses only, report what is dangerous.

A copy is never delivered anywhere. After its attachments are analysed (the same vxCube
stage, cache and dedup as SMTP mode), a copy with a suspicious or dangerous file gets one
aggregated report, rendered from ``config/templates/bcc_report.{txt,html}`` (editable) and
sent from BccReporterAddress to BccReportRecipientAddress through BccSmtpServer; other copies
are closed. Reports carry ``X-Vxgate-Report``; a copy carrying it is closed unanalysed, so a
report that the MTA copies back to the monitor never loops.
"""
import email.charset
import email.utils
import json
import os
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import jinja2

from salmon_app import headers, models
from salmon_app.policy.modify import zip_archive
from salmon_app.receiver import Reply
from salmon_app.verdict import Verdict

LOOP_HEADER = "X-Vxgate-Report"
_QP_UTF8 = email.charset.Charset("utf-8")
_QP_UTF8.body_encoding = email.charset.QP
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "templates")


def recipient_check(monitor_addresses):
    """The RCPT check of the BCC socket: only the monitoring addresses or @domains (never a relay)."""
    addresses = {a.lower() for a in monitor_addresses if not a.startswith("@")}
    domains = {a.lower() for a in monitor_addresses if a.startswith("@")}

    def check(address):
        lowered = address.lower()
        if lowered in addresses or "@" + lowered.rpartition("@")[2] in domains:
            return
        raise Reply(550, "5.7.1 <%s>: this is a BCC monitoring socket, not a relay" % address)
    return check


def is_report(headers):
    return ("\n" + headers.decode("latin-1").lower()).find("\n" + LOOP_HEADER.lower() + ":") >= 0


def finish(gateway, message, analysis):
    """Close an analysed copy, with one report when some file is suspicious or dangerous."""
    verdict = Verdict.parse(analysis.get("verdict", "none"))
    fields = {"verdict": verdict.label, "analysis_json": json.dumps(analysis)}
    if verdict < Verdict.SUSPICIOUS:
        return gateway.conclude(message.queue_id, models.CLOSED, None,
                                "analysed: %s; no report" % verdict.label, remove_file=False, **fields)
    config = gateway.config
    data = render(gateway, message.row, analysis)
    report_id = gateway.inject("report", config.BccReporterAddress, [config.BccReportRecipientAddress], data,
                               parent=message.queue_id, subject="vxgate report about %s" % message.queue_id)
    gateway.conclude(message.queue_id, models.REPORTED, None,
                     "%s: report %s to %s" % (verdict.label, report_id, config.BccReportRecipientAddress), **fields)


def render(gateway, row, analysis):
    config = gateway.config
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(config.BccTemplateDir or TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True)
    found = headers.fields(gateway.headers_of(row.id), ("To", "Cc", "Date"))
    files = [_file_view(f, config.VxcubeApiAddress) for f in analysis.get("files", [])]
    values = {
        "verdict": analysis.get("verdict"), "counts": analysis.get("counts", {}), "files": files,
        "subject": row.subject, "header_from": row.header_from, "message_id": row.message_id,
        "header_rcpts": ", ".join(v for v in (found.get("to"), found.get("cc")) if v) or "(not shown)",
        "date": found.get("date", ""), "mail_from": row.mail_from, "rcpt_to": row.rcpt_to,
        "client": _client(row.client), "queue_id": row.id, "hostname": gateway.hostname,
    }
    body = MIMEMultipart("alternative")
    report = body
    if config.BccAttachOriginal:
        report = MIMEMultipart("mixed")
    report["From"] = config.BccReporterAddress
    report["To"] = config.BccReportRecipientAddress
    report["Subject"] = "[vxgate] %s: %s" % (analysis.get("verdict", "").upper(), row.subject or "(no subject)")
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=gateway.hostname)
    report["Auto-Submitted"] = "auto-generated"
    report[LOOP_HEADER] = row.id
    for name, subtype in (("bcc_report.txt", "plain"), ("bcc_report.html", "html")):
        part = MIMEText("", subtype)
        part.set_payload(env.get_template(name).render(values), _QP_UTF8)   # readable in the raw source
        body.attach(part)
    if report is not body:
        report.attach(body)
        report.attach(_original(gateway, row))
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _original(gateway, row):
    """The copy as original.zip: protected like a repacked threat (the identifier is the queue id)."""
    from email.mime.application import MIMEApplication
    password = gateway.repack_password.password_for(row.id)
    archive = zip_archive("%s.eml" % row.id, gateway.spool.read(row.id), password)
    part = MIMEApplication(archive, "zip")
    part.add_header("Content-Disposition", "attachment", filename="original.zip")
    return part


def _file_view(item, api_address):
    tasks = item.get("tasks", [])
    rules = sorted({rule for t in tasks for kind in ("malicious", "suspicious")
                    for rule in (t.get("rules") or {}).get(kind, [])})
    view = dict(item, platforms=[t.get("platform") for t in tasks if t.get("platform")], rules=rules)
    view["analysis_url"] = ("%s/api-2.0/analyses/%s" % (_base(api_address), item["analysis_id"])
                            if item.get("analysis_id") and api_address else "")
    return view


def _base(address):
    address = address.rstrip("/")
    return address if "://" in address else "https://" + address


def _client(info):
    name, addr = info.get("name") or "", info.get("addr") or info.get("peer_ip", "")
    return ("%s [%s]" % (name, addr)) if name else addr
