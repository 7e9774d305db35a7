"""``vxgate demo``: vxgate on its built-in defaults between a local vxCube emulator and a
local next hop, a handful of messages, and a summary of what happened to each.

It starts the vxCube emulator and an SMTP sink on SmtpSenderRelay's default address
(127.0.0.1:10026), then vxgate itself with ``salmon start`` (SmtpSocket 127.0.0.1:10025, the
default hook), sends the messages, waits for their outcomes, prints them, and stops
everything with ``salmon stop``. Its spool, database, log and configuration are under
``run/demo/`` so they can be looked at afterwards.
"""
import email
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from email import policy
from email.message import EmailMessage

from salmon_app.sink import SinkServer
from salmon_app.vxcube.sim import VxcubeSim

DEMO_DIR = os.path.join("run", "demo")
KEY = "0d3e7f6a-4c1b-4e8a-9d2f-6b5a4c3d2e1f"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EXE = b"MZ" + b"\0" * 58 + b"\x80\0\0\0" + b"\0" * 64 + b"PE\0\0" + b"\0" * 128


def _message(subject, files=(), text="Hello from the vxgate demo.\n"):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@demo.test", "bob@demo.test", subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain="demo.test")
    msg.set_content(text)
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=policy.SMTP)


MESSAGES = [
    ("plain text, no attachment", "", ["bob@demo.test"], _message("Lunch on Friday?")),
    ("a clean program", "alice@demo.test", ["bob@demo.test", "carol@demo.test"],
     _message("The tool you asked for", [("tool.exe", EXE + b"harmless")])),
    ("EICAR test virus", "alice@demo.test", ["bob@demo.test"],
     _message("Invoice 4711", [("invoice.pdf.exe", EXE + EICAR)])),
    ("a suspicious file", "alice@demo.test", ["bob@demo.test"],
     _message("Macro document", [("report.exe", EXE + b"VXGATE-TEST-SUSPICIOUS")])),
    ("analysis fails (unchecked)", "alice@demo.test", ["bob@demo.test"],
     _message("Odd file", [("odd.exe", EXE + b"VXGATE-TEST-FAIL")])),
]
# what the default hook does with each: a failed analysis is a vxCube outage, deferred (451,
# the sending MTA retries) until VxcubeMaxHold, then quarantined
EXPECTED = ["delivered", "delivered", "delivered", "delivered", "tempfailed"]


def say(text):
    print(text, flush=True)


def _port_free(port):
    with socket.socket() as sock:
        # as the servers bind: connections of a demo that just ended (TIME_WAIT) leave it free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def run(args):
    for port, what in ((10025, "SmtpSocket"), (10026, "SmtpSenderRelay")):
        if not _port_free(port):
            say("vxgate demo: 127.0.0.1:%d (%s's default) is in use; stop what uses it and try again" % (port, what))
            return 1
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    os.makedirs(DEMO_DIR, mode=0o700)
    bin_dir = os.path.dirname(sys.executable)
    sim = VxcubeSim("127.0.0.1", 0, api_key=KEY, analysis_time=3.0).start()
    sink = SinkServer("127.0.0.1", 10026, hostname="nexthop.demo").start()
    say("1. vxCube emulator on %s, next hop (SMTP sink) on 127.0.0.1:10026" % sim.url)
    ini = os.path.join(DEMO_DIR, "vxgate.ini")
    with open(ini, "w") as handle:
        handle.write("; written by vxgate demo: built-in defaults plus the emulator\n"
                     "[Root]\nUseVxcube = Yes\nVxcubeApiAddress = %s\nVxcubeApiKey = %s\nPidFile = %s/smtp.pid\n"
                     "VxcubeAnalysisTime = 3s\nVxcubePollInterval = 0.5s\n"
                     "[MailD]\nRepackPassword = HMAC(demo-secret)\n"
                     "[Quarantine]\nSpoolDir = %s/spool\nDatabasePath = %s/quarantine.db\n"
                     % (sim.url, KEY, DEMO_DIR, DEMO_DIR, DEMO_DIR))
    env = dict(os.environ, VXGATE_CONFIG=ini)
    # the demo is a throw-away run in run/demo/: a root shell (a container) may run it as root
    allow_root = ["--allow-root"] if os.geteuid() == 0 else []
    try:
        started = subprocess.run([os.path.join(bin_dir, "salmon"), "start"] + allow_root, env=env)
        if started.returncode != 0 or not _wait_port(10025):
            say("vxgate did not start; see logs/salmon.err and logs/vxgate.log")
            return 1
        say("2. vxgate started with `salmon start` on 127.0.0.1:10025 (config %s)" % ini)
        say("3. sending %d messages:" % len(MESSAGES))
        replies = []
        for label, sender, rcpts, data in MESSAGES:
            with smtplib.SMTP("127.0.0.1", 10025, timeout=120) as client:
                client.ehlo()
                client.mail(sender)
                for rcpt in rcpts:
                    client.rcpt(rcpt)
                code, text = client.data(data)
            replies.append("%d %s" % (code, text.decode()))
            say("   %-28s -> %s" % (label, replies[-1]))
        return _summary(env, replies, sink)
    finally:
        subprocess.run([os.path.join(bin_dir, "salmon"), "stop"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sink.stop()
        sim.stop()
        say("5. stopped vxgate (`salmon stop`), the emulator and the next hop.")
        say("   Look around: logs/vxgate.log, %s/ (spool, quarantine.db), "
            "`VXGATE_CONFIG=%s .venv/bin/vxgate quarantine list`" % (DEMO_DIR, ini))


def _summary(env, replies, sink):
    from salmon_app import config as vxconfig
    from salmon_app.storage import models
    cfg = vxconfig.load(env["VXGATE_CONFIG"])
    models.open_database(cfg.DatabasePath)
    deadline = time.time() + 60
    while time.time() < deadline:
        rows = list(models.Message.select().where(models.Message.mode == "smtp").order_by(models.Message.created))
        if len(rows) == len(MESSAGES) and all(r.state in models.FINAL for r in rows):
            break
        time.sleep(0.2)
    say("4. what happened:")
    received = {email.message_from_bytes(m.data)["Message-ID"]: m for m in sink.messages}
    for (label, _, rcpts, data), row in zip(MESSAGES, rows):
        original = email.message_from_bytes(data)
        got = received.get(original["Message-ID"])
        say("   %s  %s" % (row.id, label))
        say("      state %-10s verdict %-10s recipients %s" % (row.state, row.verdict, ", ".join(rcpts)))
        if got is None:
            say("      not delivered%s" % (": answered 451, the sending MTA keeps it and retries (the default hook "
                                         "defers a vxCube outage until VxcubeMaxHold)" if row.state == "tempfailed" else ""))
            continue
        parsed = email.message_from_bytes(got.data)
        if got.data == data:
            say("      delivered byte-identical")
        else:
            zips = [p.get_filename() for p in parsed.walk() if p.get_content_type() == "application/zip"]
            say("      delivered modified: Subject %r, X-Vxgate-Verdict %s%s" % (
                parsed["Subject"], parsed["X-Vxgate-Verdict"], ", repacked into " + ", ".join(zips) if zips else ""))
    ok = [r.state for r in rows] == EXPECTED
    say("   %d of %d messages delivered, %d deferred; every message is in the quarantine database." % (
        sum(r.state == "delivered" for r in rows), len(MESSAGES), sum(r.state == "tempfailed" for r in rows)))
    models.db.close()
    return 0 if ok else 1
