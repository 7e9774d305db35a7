"""``Processes = N``: one daemon, N processes on one socket, SQLite file and spool folder.

Each test runs the real daemon (``salmon start --no-daemon``) relaying to a real next hop and
checks what an administrator would: what the next hop received (each message once), the
records and their nodes, the processes that run (``/proc``), ``/metrics`` on the master, the
``vxgate`` commands' output, and the log.
"""
import os
import signal
import time
import urllib.request

import pytest

from support.gateway import send_at_once
from support.mail import mail_with
from support.waiting import wait_until

from salmon_app.config import SocketAddr
from salmon_app.storage import models, subnodes
from salmon_app.storage.models import Message

pytestmark = pytest.mark.slow


def numbered(n):
    return (b"From: load@x.test\r\nTo: r@x.test\r\nSubject: load %d\r\nMessage-ID: <%d@load.test>\r\n\r\nbody %d\r\n"
            % (n, n, n))


def counts(sink):
    found = {}
    for message in list(sink.messages):
        n = int(message.data.split(b"Subject: load ", 1)[1].split(b"\r\n", 1)[0])
        found[n] = found.get(n, 0) + 1
    return found


def workers(master_pid):
    """{slot: pid} of the processes the master runs now."""
    found = {}
    for pid in children_of(master_pid):
        try:
            with open("/proc/%d/environ" % pid, "rb") as handle:
                env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if b"VXGATE_SLOT" in env:
            found[int(env[b"VXGATE_SLOT"])] = pid
    return found


def children_of(pid):
    """Every thread's children: the master starts a process again from its watcher thread."""
    found = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return found


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def records(tmp_path):
    """Read the daemon's SQLite file from the test: ``records(node)`` binds it and returns Message."""
    opened = []
    previous = models.db.obj

    def bind(node):
        if not opened:
            opened.append(models.open_database(str(node.home / "quarantine.db"), upgrade=False))
        return Message
    yield bind
    for database in opened:
        database.close()
    models.db.initialize(previous)


def start_two(nodes, tmp_path, sink, **params):
    values = dict(Processes=2)
    values.update(params)
    node = nodes(tmp_path / "a", "alpha", None, sink.port, **values).start()
    wait_until(lambda: "processes: 2 running" in node.log.read_text(), 60, "both processes ready")
    assert len(workers(node.proc.pid)) == 2
    return node


def deferred_on_two(nodes, tmp_path, sink, records, count):
    """Two processes holding ``count`` acknowledged messages that the next hop defers."""
    sink.data_reply = (451, "4.3.0 next hop busy")
    node = start_two(nodes, tmp_path, sink)
    errors = send_at_once(lambda n: node.send(numbered(n)), count)
    assert not errors
    Message_ = records(node)
    wait_until(lambda: Message_.select().where(Message_.state == "deferred").count() == count, 30,
               "%d deferred" % count)
    return node, Message_


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as reply:
        return reply.read().decode()


def metric(text, line_start):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


# ---------------------------------------------------------------- one socket, two processes
def test_two_processes_take_mail_on_one_socket_and_deliver_each_message_once(tmp_path, nodes, sink, records):
    from support.pgcluster import free_port
    metrics_port = free_port()
    node = start_two(nodes, tmp_path, sink, MetricsSocket=SocketAddr("127.0.0.1", metrics_port))
    errors = send_at_once(lambda n: node.send(numbered(n)), 120)
    assert not errors
    sink.wait_for(120, 60)
    Message_ = records(node)
    wait_until(lambda: Message_.select().where(Message_.state == "delivered").count() == 120, 30, "120 delivered")
    assert sorted(counts(sink).items()) == [(n, 1) for n in range(120)]
    by_node = {n: Message_.select().where(Message_.node == n).count() for n in ("alpha", "alpha/1")}
    assert sum(by_node.values()) == 120 and min(by_node.values()) > 0, by_node    # both processes took mail
    assert os.path.isdir(tmp_path / "a" / "spool" / "proc-1")
    text = scrape(metrics_port)                      # the master's /metrics: the sum of both
    assert metric(text, 'vxgate_messages_received_total{mode="smtp"}') == 120
    assert metric(text, 'vxgate_messages_finished_total{mode="smtp",outcome="delivered"}') == 120
    assert metric(text, 'vxgate_stage_workers{stage="check"}') == 8       # SmtpWorkers 4 in each
    status = node.vxgate("db", "status")
    assert "alpha/1" in status and status.count("yes (pid %d)" % node.proc.pid) == 2


def test_kept_connections_are_shared_evenly_by_the_processes(tmp_path, nodes, sink, records):
    """Postfix keeps its connections to a content filter: the process that takes one keeps its
    whole stream, so the connections must be spread, not left to whichever process wins the
    race for each (seen: 2 and 8 of 10, one process saturated while the other idled)."""
    import smtplib
    node = start_two(nodes, tmp_path, sink)
    clients = []

    def connect(_):
        client = smtplib.SMTP("127.0.0.1", node.port, timeout=30)
        clients.append(client)
        client.ehlo()
    try:
        assert not send_at_once(connect, 30)      # a burst, as Postfix opens them under load
        for n, client in enumerate(clients):      # then one message over each
            client.sendmail("alice@x.test", ["bob@x.test"], numbered(n))
    finally:
        for client in clients:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                pass
    sink.wait_for(30, 60)
    Message_ = records(node)
    by_node = {n: Message_.select().where(Message_.node == n).count() for n in ("alpha", "alpha/1")}
    assert sum(by_node.values()) == 30 and abs(by_node["alpha"] - by_node["alpha/1"]) <= 2, by_node


# ---------------------------------------------------------------- a process dies
def test_a_killed_process_is_started_again_and_its_acknowledged_mail_delivered_once(tmp_path, nodes, sink, records):
    sink.data_reply = (451, "4.3.0 next hop busy")        # acknowledged mail waits in the spools
    node = start_two(nodes, tmp_path, sink)
    errors = send_at_once(lambda n: node.send(numbered(n)), 40)
    assert not errors
    Message_ = records(node)
    wait_until(lambda: Message_.select().where(Message_.node == "alpha/1", Message_.state == "deferred").count() > 0,
               30, "mail deferred in process 1")
    first = workers(node.proc.pid)
    core = cpus_allowed(first[1])
    os.kill(first[1], signal.SIGKILL)
    wait_until(lambda: workers(node.proc.pid).get(1) not in (None, first[1]), 30, "process 1 started again")
    assert workers(node.proc.pid)[0] == first[0]        # the other one went on
    wait_until(lambda: cpus_allowed(workers(node.proc.pid)[1]) == core, 30, "process 1 back on its core")
    wait_until(lambda: "ended with signal SIGKILL" in node.log.read_text(), 10, "the log line")
    sink.data_reply = None
    sink.wait_for(40, 60)
    wait_until(lambda: Message_.select().where(Message_.state == "delivered").count() == 40, 30, "40 delivered")
    time.sleep(1)       # a second delivery would come with the next retry round
    assert sorted(counts(sink).items()) == [(n, 1) for n in range(40)]


# ---------------------------------------------------------------- stop, reload
def test_stop_ends_every_process_and_reload_reaches_each(tmp_path, nodes, sink):
    hook = tmp_path / "hook.lua"
    hook.write_text('function smtp_hook(ctx) return {action = "accept"} end\n')
    node = start_two(nodes, tmp_path, sink, SmtpHook=str(hook))
    hook.write_text('function smtp_hook(ctx) return {action = "reject", message = "reloaded policy"} end\n')
    out = node.vxgate("reload")
    assert "reloaded" in out, out
    replies = []

    def send(n):
        try:
            node.send(numbered(n))
        except Exception as exc:     # smtplib raises on the 5xx
            replies.append(str(exc))
    send_at_once(send, 20)
    assert len(replies) == 20 and all("reloaded policy" in r for r in replies), replies
    pids = list(workers(node.proc.pid).values()) + [node.proc.pid]
    node.stop()
    assert node.proc.returncode == 0
    assert not any(alive(pid) for pid in pids)
    assert not node.pid.exists()


# ---------------------------------------------------------------- Processes lowered
def test_lowering_processes_hands_the_retired_process_mail_to_process_0(tmp_path, nodes, sink, records):
    node, Message_ = deferred_on_two(nodes, tmp_path, sink, records, 30)
    on_1 = Message_.select().where(Message_.node == "alpha/1").count()
    assert on_1 > 0
    node.stop()
    node.ini.write_text(node.ini.read_text().replace("Processes = 2", "Processes = 1"))
    sink.data_reply = None
    node.start()
    sink.wait_for(30, 60)
    wait_until(lambda: Message_.select().where(Message_.state == "delivered").count() == 30, 30, "30 delivered")
    assert sorted(counts(sink).items()) == [(n, 1) for n in range(30)]
    assert Message_.select().where(Message_.node == "alpha/1").count() == 0
    assert not os.path.exists(tmp_path / "a" / "spool" / "proc-1")
    assert "the mail of alpha/1 (%d records, %d files) now belongs to alpha" % (on_1, on_1) in node.log.read_text()


# ---------------------------------------------------------------- the quarantine commands
def test_quarantine_commands_find_a_message_kept_by_any_process(tmp_path, nodes, sink, records):
    hook = tmp_path / "hook.lua"
    hook.write_text('function smtp_hook(ctx) return {action = "quarantine", message = "kept"} end\n')
    node = start_two(nodes, tmp_path, sink, SmtpHook=str(hook))
    sent = {n: mail_with([("a.txt", b"attachment %d" % n)], subject="load %d" % n) for n in range(20)}
    errors = send_at_once(lambda n: node.send(sent[n]), 20)
    assert not errors
    Message_ = records(node)
    wait_until(lambda: Message_.select().where(Message_.state == "quarantined").count() == 20, 30, "20 quarantined")
    row = Message_.select().where(Message_.node == "alpha/1").first()
    assert row is not None
    listed = node.vxgate("quarantine", "list")
    assert any(row.id in line and "alpha/1" in line for line in listed.splitlines())
    checked = node.vxgate("quarantine", "check")        # exit 0: every record's file found
    assert "check: OK (20 records, 20 files)" in checked, checked     # both processes' spools
    exported = tmp_path / "out.eml"
    node.vxgate("quarantine", "export", row.id, "-o", str(exported))
    number = int(row.subject.rsplit(" ", 1)[1])
    assert exported.read_bytes() == sent[number]
    node.vxgate("quarantine", "release", row.id)
    wait_until(lambda: len(sink.messages) == 1, 30, "the release at the next hop")
    assert sink.messages[0].data == sent[number]


# ---------------------------------------------------------------- each process's configuration
def test_each_process_has_its_node_spool_and_share_of_the_upload_budget(tmp_path):
    from support.gateway import make_config
    config = make_config(tmp_path, 25, NodeName="mx1", Processes=3, VxcubeUploadBudget=100,
                         MetricsSocket=SocketAddr("127.0.0.1", 9425))
    first, third = subnodes.slot_config(config, 0, 3), subnodes.slot_config(config, 2, 3)
    assert (first.NodeName, first.SpoolDir) == ("mx1", config.SpoolDir)
    assert (third.NodeName, third.SpoolDir) == ("mx1/2", os.path.join(config.SpoolDir, "proc-2"))
    assert third.VxcubeUploadBudget == 33 and third.MetricsSocket.port == 0
    assert subnodes.slot_config(config.replace(VxcubeUploadBudget=0), 1, 3).VxcubeUploadBudget == 0   # no limit stays
    assert subnodes.count(config.replace(Processes=0)) == len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- CPU cores (PinProcesses)
def cpus_allowed(pid, task=None):
    """The cores ``pid`` (or one of its threads) may run on, as the kernel says."""
    path = "/proc/%d/status" % pid if task is None else "/proc/%d/task/%s/status" % (pid, task)
    with open(path) as handle:
        text = next(line for line in handle if line.startswith("Cpus_allowed_list:")).split(":", 1)[1]
    cores = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def hook_processes(pid):
    def command(child):
        try:
            with open("/proc/%d/cmdline" % child, "rb") as handle:
                return handle.read()
        except OSError:       # it ended meanwhile
            return b""
    return [child for child in children_of(pid) if b"salmon_app.policy.process" in command(child)]


def placed(pid, cores):
    """True once ``pid`` has hook processes and every one may run on exactly ``cores``."""
    hooks = hook_processes(pid)
    try:
        return bool(hooks) and all(cpus_allowed(h) == cores for h in hooks)
    except OSError:      # one was replaced meanwhile
        return False


def test_each_process_keeps_to_a_core_of_its_own_and_its_hook_processes_join_it_when_every_core_has_one(
        tmp_path, nodes, sink):
    given = os.sched_getaffinity(0)         # what the daemon was started with (it inherits ours)
    if len(given) < 2:
        pytest.skip("one CPU core: every process is on it, pinned or not")
    node = start_two(nodes, tmp_path, sink)
    node.send(numbered(0))
    sink.wait_for(1, 30)
    pids = workers(node.proc.pid)
    cores = {slot: cpus_allowed(pid) for slot, pid in pids.items()}
    assert all(len(c) == 1 and c <= given for c in cores.values()), cores
    assert cores[0] != cores[1], cores        # the processes take the cores in turn
    for slot, pid in pids.items():              # every thread, those started before the pin too
        assert all(cpus_allowed(pid, task) == cores[slot] for task in os.listdir("/proc/%d/task" % pid))
        # and none takes the core from the thread running when it wakes (affinity.py)
        assert all(os.sched_getscheduler(int(task)) == os.SCHED_BATCH for task in os.listdir("/proc/%d/task" % pid))
        # two processes: on two cores each core has one, and its hook processes share it;
        # with cores to spare they keep to any core (a shared core cost 12% of the mail there)
        # (each is placed once it is ready: the check workers start theirs side by side)
        expected = cores[slot] if len(given) == 2 else given
        wait_until(lambda: placed(pid, expected), 60, "hook processes of process %d on %s" % (slot, expected))
        core = next(iter(cores[slot]))
        assert "process %d running on CPU core %d (PinProcesses)" % (slot, core) in node.log.read_text()
    assert cpus_allowed(node.proc.pid) == given        # the master does no mail work
    assert os.sched_getscheduler(node.proc.pid) == os.SCHED_OTHER


def test_a_single_process_keeps_to_one_core_and_pin_processes_no_to_none(tmp_path, nodes, sink):
    given = os.sched_getaffinity(0)
    if len(given) < 2:
        pytest.skip("one CPU core: every process is on it, pinned or not")
    node = nodes(tmp_path / "one", "one", None, sink.port).start()
    wait_until(lambda: "running on CPU core" in node.log.read_text(), 30, "the pin logged")
    core = cpus_allowed(node.proc.pid)
    assert len(core) == 1 and core <= given
    # the other cores are free: its hook processes use them
    wait_until(lambda: placed(node.proc.pid, given), 60, "hook processes on every core")
    node.stop()
    loose = start_two(nodes, tmp_path, sink, PinProcesses=False)
    assert all(cpus_allowed(pid) == given for pid in workers(loose.proc.pid).values())
    assert all(os.sched_getscheduler(pid) == os.SCHED_OTHER for pid in workers(loose.proc.pid).values())
    assert "PinProcesses" not in loose.log.read_text()
    loose.stop()
    # more processes than cores: two on one core would carry twice the mail of the others
    crowd = nodes(tmp_path / "crowd", "crowd", None, sink.port, Processes=len(given) + 1).start()
    wait_until(lambda: "processes: %d running" % (len(given) + 1) in crowd.log.read_text(), 60, "all processes ready")
    assert all(cpus_allowed(pid) == given for pid in workers(crowd.proc.pid).values())
    assert "Processes = %d is more than the %d CPU cores" % (len(given) + 1, len(given)) in crowd.log.read_text()


# ---------------------------------------------------------------- the master is killed
def test_killed_master_takes_its_processes_along_and_a_new_start_resumes_the_mail_once(tmp_path, nodes, sink, records):
    node, Message_ = deferred_on_two(nodes, tmp_path, sink, records, 30)
    pids = list(workers(node.proc.pid).values())
    node.kill()
    # the kernel tells them (PR_SET_PDEATHSIG): they finish their work in hand and end
    wait_until(lambda: not any(alive(pid) for pid in pids), 60, "the processes to end with their master")
    sink.data_reply = None
    node.start()
    sink.wait_for(30, 60)
    wait_until(lambda: Message_.select().where(Message_.state == "delivered").count() == 30, 30, "30 delivered")
    time.sleep(1)
    assert sorted(counts(sink).items()) == [(n, 1) for n in range(30)]


def test_an_adoption_cut_short_is_finished_at_the_next_start_even_with_processes_raised_again(
        tmp_path, nodes, sink, records):
    node, Message_ = deferred_on_two(nodes, tmp_path, sink, records, 20)
    on_1 = [r.id for r in Message_.select(Message_.id).where(Message_.node == "alpha/1")]
    assert on_1
    node.stop()
    # as if a start with Processes = 1 had moved process 1's files and died before the records
    spool = tmp_path / "a" / "spool"
    (spool / subnodes.JOURNAL).write_text("1\n")
    for queue_id in on_1:
        (spool / queue_id[:2]).mkdir(exist_ok=True)
        os.rename(spool / "proc-1" / queue_id[:2] / (queue_id + ".eml"), spool / queue_id[:2] / (queue_id + ".eml"))
    sink.data_reply = None
    node.start()             # Processes = 2 still
    sink.wait_for(20, 60)
    wait_until(lambda: Message_.select().where(Message_.state == "delivered").count() == 20, 30, "20 delivered")
    time.sleep(1)
    assert sorted(counts(sink).items()) == [(n, 1) for n in range(20)]
    assert {r.node for r in Message_.select().where(Message_.id.in_(on_1))} == {"alpha"}
    assert not (spool / subnodes.JOURNAL).exists()


def test_a_process_stuck_holding_the_write_lock_means_451_not_a_hang(tmp_path, nodes, sink, records):
    """Mail received while the write lock cannot be had: a message relayed meanwhile is a
    fact (the next hop has it): its client hears 250 and its records wait in memory; the
    process then counts storage as failing and refuses new mail with 451 until the lock is
    free. Every answer comes within the busy time-out, and nothing goes out twice."""
    import fcntl
    import smtplib
    node = start_two(nodes, tmp_path, sink, DatabaseBusyTimeout=1.0)
    lock = os.open(str(tmp_path / "a" / "quarantine.db.writer"), os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)         # as a stopped process inside a write transaction would
    answers = {}
    try:
        for n in range(3):      # the third at the latest reaches a process that knows storage fails
            started = time.monotonic()
            try:
                node.send(numbered(n))
                answers[n] = 250
            except smtplib.SMTPResponseException as exc:
                answers[n] = exc.smtp_code
            assert time.monotonic() - started < 20
        assert set(answers.values()) <= {250, 451} and 451 in answers.values(), answers
    finally:
        os.close(lock)

    def accepted():
        try:
            node.send(numbered(3))
            return True
        except smtplib.SMTPResponseException as exc:
            assert exc.smtp_code == 451
            return False
    wait_until(accepted, 60, "mail accepted again once the lock is free", interval=0.5)
    delivered = sorted(n for n, code in answers.items() if code == 250) + [3]
    sink.wait_for(len(delivered), 30)
    Message = records(node)
    wait_until(lambda: Message.select().where(Message.state == models.DELIVERED).count() == len(delivered), 30,
               "the kept records written once the lock is free")
    time.sleep(1.5)     # a sweeper round more: nothing goes out twice
    assert counts(sink) == {n: 1 for n in delivered}
