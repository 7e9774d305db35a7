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

from salmon_app import headers
from salmon_app.storage import models
from salmon_app.compose import POLICY, one_line, put, to_bytes
from salmon_app.log import qlog
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
    env = _environment(config.BccTemplateDir or TEMPLATES)
    found = headers.fields(gateway.headers_of(row.id), ("To", "Cc", "Date"))
    files = [_file_view(f, config.VxcubeApiAddress) for f in analysis.get("files", [])]
    # everything taken from the copy is shown as one line, so it cannot forge lines of the report
    values = {
        "verdict": analysis.get("verdict"), "counts": analysis.get("counts", {}), "files": files,
        "subject": one_line(row.subject), "header_from": one_line(row.header_from),
        "message_id": one_line(row.message_id),
        "header_rcpts": one_line(", ".join(v for v in (found.get("to"), found.get("cc")) if v)) or "(not shown)",
        "date": one_line(found.get("date", "")), "mail_from": one_line(row.mail_from),
        "rcpt_to": [one_line(a) for a in row.rcpt_to], "client": one_line(_client(row.client)),
        "queue_id": row.id, "hostname": gateway.hostname,
    }
    verdict = one_line(analysis.get("verdict", "")).upper()
    body = MIMEMultipart("alternative", policy=POLICY)
    report = body
    if config.BccAttachOriginal:
        report = MIMEMultipart("mixed", policy=POLICY)
    report["From"] = config.BccReporterAddress
    report["To"] = config.BccReportRecipientAddress
    put(report, "Subject", "[vxgate] %s: %s" % (verdict, one_line(row.subject) or "(no subject)"),
        placeholder="[vxgate] %s: (subject not shown)" % verdict)
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=gateway.hostname)
    report["Auto-Submitted"] = "auto-generated"
    report[LOOP_HEADER] = row.id
    for name, subtype in (("bcc_report.txt", "plain"), ("bcc_report.html", "html")):
        part = MIMEText("", subtype, policy=POLICY)
        part.set_payload(_render(env, name, values, config.BccTemplateDir, row.id), _QP_UTF8)   # readable raw
        body.attach(part)
    if report is not body:
        report.attach(body)
        report.attach(_original(gateway, row))
    return to_bytes(report)


def _environment(directory):
    return jinja2.Environment(loader=jinja2.FileSystemLoader(directory),
                              autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True)


def _render(env, name, values, custom_dir, queue_id):
    """A template rendered; a broken custom one gives way to the built-in one (a report is
    never held back by an edit of the templates)."""
    try:
        return env.get_template(name).render(values)
    except (jinja2.TemplateError, OSError) as exc:
        if not custom_dir:
            raise
        qlog(queue_id).error("report template %s in %s: %s: %s; the built-in template is used",
                             name, custom_dir, type(exc).__name__, exc)
        return _environment(TEMPLATES).get_template(name).render(values)


def _original(gateway, row):
    """The copy as original.zip: protected like a repacked threat (the identifier is the queue id)."""
    from email.mime.application import MIMEApplication
    password = gateway.repack_password.password_for(row.id)
    archive = zip_archive("%s.eml" % row.id, gateway.spool.read(row.id), password)
    part = MIMEApplication(archive, "zip", policy=POLICY)
    part.add_header("Content-Disposition", "attachment", filename="original.zip")
    return part


def _file_view(item, api_address):
    tasks = item.get("tasks", [])
    rules = sorted({rule for t in tasks for kind in ("malicious", "suspicious")
                    for rule in (t.get("rules") or {}).get(kind, [])})
    view = dict(item, platforms=[t.get("platform") for t in tasks if t.get("platform")], rules=rules,
                name=one_line(item.get("name")), reason=one_line(item.get("reason")))
    view["analysis_url"] = ("%s/api-2.0/analyses/%s" % (_base(api_address), item["analysis_id"])
                            if item.get("analysis_id") and api_address else "")
    return view


def _base(address):
    address = address.rstrip("/")
    return address if "://" in address else "https://" + address


def _client(info):
    name, addr = info.get("name") or "", info.get("addr") or info.get("peer_ip", "")
    return ("%s [%s]" % (name, addr)) if name else addr
