"""A dry run of ``SmtpHook`` on built-in sample messages, for ``vxgate check-config``.

A hook that loads can still be wrong for every message (``action = "acept"`` tempfails all
mail). ``dry_run()`` runs it on five samples (no attachment, and one file that vxCube found
clean, suspicious, dangerous, or could not analyse: an outage, cause ``vxcube-error``) and returns one line per sample with the
decision, or the error a real message would have met. Nothing is sent or stored.
"""
import base64
import logging

from salmon_app.policy import Envelope, HookError, HookRuntime

_FILE = b"MZ" + b"\0" * 62 + b"sample"


def _message(subject, attachment=None):
    head = (b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: %s\r\n"
            b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <dry-run@example.org>\r\nMIME-Version: 1.0\r\n"
            % subject.encode())
    if attachment is None:
        return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\nJust text.\r\n"
    return head + (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                   b"Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n"
                   b'Content-Type: application/octet-stream; name="%s"\r\n'
                   b'Content-Disposition: attachment; filename="%s"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                   b"%s\r\n--b--\r\n" % (attachment.encode(), attachment.encode(), base64.b64encode(_FILE)))


def _analysis(verdict):
    task = {"platform": "win10x64", "status": "successful" if verdict != "unchecked" else "failed",
            "verdict": {"clean": "clean1", "suspicious": "suspicious1", "dangerous": "malware1"}.get(verdict),
            "maliciousness": {"clean": 0, "suspicious": 50, "dangerous": 100}.get(verdict),
            "rules": {"malicious": [], "suspicious": [], "neutral": []}}
    return {"verdict": verdict, "files": [{
        "name": "%s.exe" % verdict, "type": "exe", "size": len(_FILE), "sha256": "0" * 64, "verdict": verdict,
        "maliciousness": task["maliciousness"], "analysis_id": "dry-run-%s" % verdict, "path": "2",
        "cause": "vxcube-error" if verdict == "unchecked" else "", "tasks": [task]}]}


SAMPLES = [("no attachment", _message("Lunch on Friday?"), {})] + [
    ("%s file" % verdict, _message("File %s" % verdict, "%s.exe" % verdict), _analysis(verdict))
    for verdict in ("clean", "suspicious", "dangerous", "unchecked")]


def describe(decision):
    text = decision.action
    if decision.action == "replycode":
        text += " %s %s" % (decision.code, decision.text)
    changes = [op.get("op", "?") + (" " + str(op.get("name")) if op.get("name") else "")
               for op in decision.modifications]
    if changes:
        text += "; changes: " + ", ".join(changes)
    if decision.added_recipients or decision.deleted_recipients:
        text += "; recipients +%d -%d" % (len(decision.added_recipients), len(decision.deleted_recipients))
    return text


def dry_run(config):
    """(lines, ok): the hook's decision for each sample; ok is False when any run failed."""
    runtime = HookRuntime(config.SmtpHook, memory_limit=config.SmtpHookMemory, time_limit=config.SmtpHookTimeout,
                          on_error=config.SmtpHookErrorAction.lower(), list_dir=config.SmtpHookLists)
    lines, ok = [], True
    logging.disable(logging.WARNING)     # the failures are reported here, not as log lines
    try:
        for label, raw, analysis in SAMPLES:
            ok = _run_one(runtime, label, raw, analysis, lines) and ok
    finally:
        logging.disable(logging.NOTSET)
    return lines, ok


def _run_one(runtime, label, raw, analysis, lines):
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.com"], helo="mx.example.org",
                        client={"hostname": "mx.example.org", "ip": "192.0.2.1", "port": 25}, queue_id="DRYRUN")
    try:
        decision = runtime.run(envelope, raw, analysis)
    except HookError as exc:
        lines.append("  %-16s FAILED: %s" % (label, exc))
        return False
    if decision.error:
        lines.append("  %-16s FAILED: %s (a real message would get SmtpHookErrorAction: %s)"
                     % (label, decision.reason, decision.action))
        return False
    lines.append("  %-16s %s" % (label, describe(decision)))
    return True
