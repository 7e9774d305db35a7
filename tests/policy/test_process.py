"""HookProcess: the daemon's hook runtime in a child process, killed and replaced on overrun."""
import logging
import subprocess
import sys
import time

import pytest
from support.hostile import HOOK_C_CALLS
from support.policy_data import PLAIN

from salmon_app.policy import Envelope, HookError
from salmon_app.policy.process import SLACK, HookProcess

BAD = Envelope("bad@example.org", ["bob@example.com"], queue_id="Q2")


def guarded(code):
    return ("function smtp_hook(ctx)\n if ctx.from == 'bad@example.org' then %s end\n"
            " drweb.notice('ran') return {action = 'accept'}\nend" % code)


@pytest.fixture
def process():
    made = []

    def make(code, **kw):
        made.append(HookProcess(code, **kw))
        return made[-1]
    yield make
    for p in made:
        p.close()


@pytest.mark.parametrize("code", HOOK_C_CALLS[:2])
def test_overrun_is_killed_and_replaced(process, envelope, code):
    hook = process(guarded(code), time_limit=0.3)
    child = hook._child.pid
    started = time.monotonic()
    decision = hook.run(BAD, PLAIN, {})
    assert time.monotonic() - started < 0.3 + SLACK + 1
    assert (decision.action, decision.error, decision.reason) == ("tempfail", True,
                                                                  "time limit exceeded")
    assert hook.run(envelope, PLAIN, {}).action == "accept"
    assert hook._child.pid != child


def test_a_child_that_dies_is_a_hook_failure_then_replaced(process, envelope):
    hook = process(guarded(""), on_error="accept")
    hook._child.kill()
    hook._child.wait()
    decision = hook.run(envelope, PLAIN, {})
    assert decision.error and decision.action == "accept" and "ended" in decision.reason
    assert not hook.run(envelope, PLAIN, {}).error


def test_hook_logs_reach_the_daemons_log(process, envelope, caplog):
    caplog.set_level(logging.DEBUG, logger="vxgate.hook")
    process(guarded("")).run(envelope, PLAIN, {})
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "vxgate.hook"] == [("vxgate.hook", "NOTICE", "Q1: ran")]


def test_load_errors_and_reloads(process, envelope, tmp_path):
    with pytest.raises(HookError, match="smtp_hook"):
        process("x = 1 -- smtp_hook(ctx) missing")
    path = tmp_path / "hook.lua"
    path.write_text("function smtp_hook(ctx) return {action = 'reject'} end")
    hook = process(str(path))
    assert hook.run(envelope, PLAIN, {}).action == "reject"
    path.write_text("function smtp_hook(ctx) return {action = ")
    assert hook.reload() is False and hook.run(envelope, PLAIN, {}).action == "reject"
    path.write_text("function smtp_hook(ctx) return {action = 'discard'} end")
    assert hook.reload() is True and hook.run(envelope, PLAIN, {}).action == "discard"
    assert b"discard" in hook.source


def test_a_replacement_runs_the_last_version_that_loaded(process, envelope, tmp_path):
    path = tmp_path / "hook.lua"
    path.write_text(guarded("while true do end"))
    hook = process(str(path), time_limit=0.3)
    path.write_text("broken(")
    assert hook.run(BAD, PLAIN, {}).reason == "time limit exceeded"
    hook._restart()   # as after a kill: the new child starts from the source in force
    assert hook.run(envelope, PLAIN, {}).action == "accept"


def test_close_stops_the_child(envelope):
    hook = HookProcess(guarded(""))
    child = hook._child
    hook.close()
    assert child.poll() is not None
    assert hook.run(envelope, PLAIN, {}).reason == "vxgate is shutting down"


def test_close_during_a_stuck_call_answers_the_worker_and_leaves_no_child():
    """The daemon's shut-down closes a worker's hook process while the worker waits for a
    hook stuck in a C call: the worker gets the configured failure at once, not an error
    from a connection closed under it, and no replacement is started behind the close."""
    import threading
    hook = HookProcess(guarded(HOOK_C_CALLS[0]), time_limit=5.0)
    child = hook._child
    out = {}
    worker = threading.Thread(target=lambda: out.update(decision=hook.run(BAD, PLAIN, {})))
    worker.start()
    time.sleep(0.3)                  # the worker waits for the answer now
    hook.close()
    worker.join(5)
    assert not worker.is_alive()
    assert out["decision"].action == "tempfail" and out["decision"].reason == "vxgate is shutting down"
    assert child.poll() is not None and hook._child is None


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stuck_child_dies_with_the_daemon():
    daemon = subprocess.Popen([sys.executable, "-c", (
        "from salmon_app.policy import Envelope\n"
        "from salmon_app.policy.process import HookProcess\n"
        "hook = HookProcess('function smtp_hook(ctx) table.move({}, 1, 1e12, 1, {}) end',"
        " time_limit=600)\n"
        "print(hook._child.pid, flush=True)\n"
        "hook.run(Envelope('a@x.test', ['b@x.test']), b'x', {})\n")], stdout=subprocess.PIPE)
    child = int(daemon.stdout.readline())
    time.sleep(0.5)                      # the child is inside table.move now
    assert _alive(child)
    daemon.kill()
    daemon.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_the_channel_frames_messages_whatever_the_reads_return():
    """The worker and its child exchange length-prefixed pickles over a socketpair: a message
    cut into pieces, several in one read, one larger than a read, a silent peer (the time-out)
    and a closed one (EOFError)."""
    import pickle
    import socket
    import threading
    from salmon_app.policy.process import _HEADER, _Channel
    ours, theirs = socket.socketpair()
    channel, peer = _Channel(ours), _Channel(theirs)
    try:
        big = b"x" * 300_000
        stream = b"".join(_HEADER.pack(len(data)) + data for data in (
            pickle.dumps(message) for message in (("run", 1), ("log", "a"), ("done", big))))
        pieces = [stream[:3], stream[3:9], stream[9:]]       # header split, then two and a half at once
        sender = threading.Thread(target=lambda: [theirs.sendall(p) or time.sleep(0.05) for p in pieces])
        sender.start()
        assert [channel.recv(5) for _ in range(3)] == [("run", 1), ("log", "a"), ("done", big)]
        sender.join()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            channel.recv(0.2)
        assert 0.15 < time.monotonic() - started < 2
        peer.send(("done", None, None))
        assert channel.recv(5) == ("done", None, None)
        # an answer that does not load is taken off all the same: the next one is whole
        theirs.sendall(_HEADER.pack(5) + b"junk!")
        peer.send(("done", 1, None))
        with pytest.raises(pickle.UnpicklingError):
            channel.recv(5)
        assert channel.recv(5) == ("done", 1, None)
        # a message that comes a byte at a time cannot stretch the deadline
        slow = _HEADER.pack(100) + b"x" * 30
        trickle = threading.Thread(target=lambda: [theirs.sendall(slow[i:i + 1]) or time.sleep(0.05)
                                                   for i in range(len(slow))])
        trickle.start()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            channel.recv(0.3)
        assert time.monotonic() - started < 1.0
        trickle.join()
        theirs.close()
        with pytest.raises(EOFError):
            channel.recv(5)
    finally:
        ours.close()
        theirs.close()
