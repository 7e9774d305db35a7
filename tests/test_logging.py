"""LogTarget and LogFormat with real mail: syslog to a real UDP listener (facility mail, the
Postfix-like tag, the queue id), and JSON lines that all parse and carry the queue id."""
import json
import logging
import socket
import time

import pytest

from salmon_app import config as vxconfig
from salmon_app import logsetup
from salmon_app.storage.models import Message
from support.mail import EICAR, mail_with, pe_image, vxcube_params

from test_relay import body, wait_state


def _config(**values):
    return vxconfig.Config(vxconfig.defaults()).replace(**values)


@pytest.fixture
def attach():
    root = logging.getLogger()
    added = []

    def add(handler):
        root.addHandler(handler)
        added.append(handler)
        return handler
    yield add
    for handler in added:
        root.removeHandler(handler)
        handler.close()


def test_syslog_target_sends_mail_facility_lines_with_the_queue_id(vxgate, sink, attach):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    address = vxconfig.parse_socket("127.0.0.1:%d" % listener.getsockname()[1])
    attach(logsetup.make_handler(_config(LogTarget="Syslog", LogSyslogAddress=address)))
    gw = vxgate()
    gw.send("alice@x.test", ["bob@x.test"], body(1))
    queue_id = Message.get().id
    lines = []
    while not any("verdict=" in line for line in lines):
        lines.append(listener.recv(65536).decode())
    listener.close()
    mine = [line for line in lines if ": %s: " % queue_id in line]
    # one line per message on the hot path, the summary (the received line is DEBUG)
    assert len([line for line in mine if " DEBUG " not in line]) == 1, lines
    for line in mine:
        priority, _, rest = line[1:].partition(">")
        assert int(priority) // 8 == 2, line          # facility mail, as Postfix logs
        assert rest.startswith("vxgate["), line
    summary = [line for line in mine if "verdict=" in line][0]
    assert "from=<alice@x.test> to=<bob@x.test>" in summary and "outcome=bob@x.test=250" in summary


def test_json_lines_all_parse_and_carry_the_queue_id(vxgate, sink, vxsim, attach, tmp_path):
    log_file = tmp_path / "vxgate.json.log"
    attach(logsetup.make_handler(_config(LogTarget="File", LogFormat="Json", LogFile=str(log_file))))
    gw = vxgate(**vxcube_params(vxsim))
    gw.send("alice@x.test", ["bob@x.test"], body(2))
    gw.send("alice@x.test", ["bob@x.test"], mail_with([("in voice,1.exe", pe_image(EICAR)), ("x.txt", b"t")]))
    sink.stop()
    gw.send("alice@x.test", ["carol@x.test"], body(3))
    wait_state(Message.rcpt_json.contains("carol"), "deferred")
    deadline = time.time() + 15
    while True:        # the deferral is recorded before its line is written: wait for the line
        records = [json.loads(line) for line in log_file.read_text().splitlines()]     # every line parses
        if any(r["event"] == "deferred" for r in records) or time.time() > deadline:
            break
        time.sleep(0.05)
    assert records and all(set(r) >= {"time", "level", "logger", "queue_id", "event", "message"} for r in records)
    ids = {m.id for m in Message.select()}
    about = [r for r in records if r["queue_id"]]
    assert {r["queue_id"] for r in about} == ids
    for record in about:       # the text still opens with the id, as in the text format
        if record["event"] != "sample":          # a sample's lines name all the messages it holds up
            assert record["message"].startswith(record["queue_id"] + ": ")
    summaries = [r for r in records if r["event"] == "summary" and "=250" in r["outcome"]]
    assert len(summaries) == 2
    eicar = [r for r in summaries if r["verdict"] == "dangerous"][0]
    assert eicar["files"] == ["in?voice?1.exe(exe):dangerous"] and eicar["action"]    # one token per file
    assert eicar["from"] == "alice@x.test" and eicar["to"] == ["bob@x.test"]
    samples = [r for r in records if r["event"] == "sample"]     # lines about a vxCube sample
    eicar_id = Message.get(Message.verdict == "dangerous").id
    assert samples and all(r["queue_ids"] == [eicar_id] and r["queue_id"] == eicar_id for r in samples)
    assert any("(for %s): dangerous" % eicar_id in r["message"] for r in samples)
    received = [r for r in records if r["event"] == "received"]     # DEBUG: the summary has the client
    assert len(received) == 3 and all(r["level"] == "DEBUG" and r["client"] == "127.0.0.1" for r in received)
    assert summaries and all(r["client"] == "127.0.0.1" for r in summaries)
    deferred = [r for r in records if r["event"] == "deferred"]
    assert deferred and deferred[0]["to"] == ["carol@x.test"] and deferred[0]["attempt"] == 1


def test_auto_target_is_the_journal_under_systemd_and_a_file_elsewhere():
    config = _config()
    assert logsetup.target(config, {"JOURNAL_STREAM": "8:1234"}) == "stderr"
    assert logsetup.target(config, {}) == "file"
    assert logsetup.target(_config(LogTarget="Syslog"), {"JOURNAL_STREAM": "8:1"}) == "syslog"


def test_a_missing_syslog_socket_falls_back_to_stderr(tmp_path, capsys):
    handler = logsetup.make_handler(_config(LogTarget="Syslog", LogSyslogAddress=vxconfig.parse_socket(
        str(tmp_path / "no-such-log-socket"))))
    assert isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    assert "does not answer" in capsys.readouterr().err


def test_a_rotated_log_file_is_reopened_and_no_line_is_lost(tmp_path):
    """logrotate moves the file (config/logrotate: no copytruncate, delaycompress): the file
    handler looks for that at most once a second, so lines go to the moved file meanwhile,
    then to a new file at the path; none is lost or written twice."""
    path = tmp_path / "vxgate.log"
    handler = logsetup.make_handler(_config(LogTarget="File", LogFile=str(path)))
    assert isinstance(handler, logsetup.WatchedFileHandler)
    logger = logging.getLogger("vxgate.test-rotation")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        logger.info("line 0")
        path.rename(tmp_path / "vxgate.log.1")
        sent, deadline = 1, time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:    # reopened within a second
            logger.info("line %d", sent)
            sent += 1
            time.sleep(0.01)
        logger.info("line %d", sent)
        sent += 1
    finally:
        logger.removeHandler(handler)
        handler.close()
    old, new = (tmp_path / "vxgate.log.1").read_text(), path.read_text()
    numbers = [int(line.rsplit(" ", 1)[1]) for line in (old + new).splitlines()]
    assert numbers == list(range(sent))
    assert "line 0\n" in old and new.endswith("line %d\n" % (sent - 1))
    import os
    with open(os.path.join(os.path.dirname(__file__), "..", "config", "logrotate", "vxgate")) as handle:
        rules = [line.split("#")[0].strip() for line in handle]
    assert "delaycompress" in rules and "copytruncate" not in rules     # what that second relies on


def test_lines_look_up_their_caller_only_when_a_format_shows_it(tmp_path):
    import io
    root = logging.getLogger()
    saved = list(root.handlers), root.level, logging._srcfile, logging.logThreads
    logsetup.configure(_config(LogTarget="File", LogFile=str(tmp_path / "a.log")), {})
    try:
        assert logging._srcfile is None          # the formats vxgate writes name no caller
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(funcName)s %(message)s"))
        conf = tmp_path / "logging.conf"
        conf.write_text("[loggers]\nkeys=root\n[handlers]\nkeys=h\n[formatters]\nkeys=f\n[logger_root]\n"
                        "level=INFO\nhandlers=h\n[handler_h]\nclass=StreamHandler\nargs=(sys.stderr,)\n"
                        "formatter=f\n[formatter_f]\nformat=%%(funcName)s: %%(message)s\n")
        logsetup.configure(_config(), {"VXGATE_LOGGING": str(conf)})
        assert logging._srcfile is not None
        logger = logging.getLogger("vxgate.test-caller")
        logger.addHandler(handler)
        logger.warning("here")
        logger.removeHandler(handler)
        assert stream.getvalue() == "test_lines_look_up_their_caller_only_when_a_format_shows_it here\n"
    finally:
        logging._srcfile, logging.logThreads = saved[2], saved[3]
        for old in list(root.handlers):
            root.removeHandler(old)
            if old not in saved[0]:
                old.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
