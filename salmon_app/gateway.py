"""The gateway: intake of received mail, the stages it moves through, and their outcomes.

``accept()`` makes a received message durable (file fsynced, record committed), hands it to
the check stage and waits up to SmtpReplyTimeout for the outcome to give Postfix (250 with the
next hop's id, or the 4xx/5xx that applies). Past that, the message is marked answered (we own
it now) before the 250 is sent, and it finishes in the background. Stage workers deliver each
message to Salmon's Router; the handlers in ``handlers/`` decide which step runs next.
"""
import json
import logging
import os
import socket
import time

import tenacity

from salmon_app import dsn, headers
from salmon_app.log import qlog
from salmon_app.metrics import Metrics, reply_class
from salmon_app.outbox import new_queue_id, store_own
from salmon_app.pipeline import Registry, Stage
from salmon_app.quarantine import render
from salmon_app.quarantine.expire import expiry_hook
from salmon_app.web.digest import digest_hook
from salmon_app.receiver import Reply, SmtpServer
from salmon_app.relay import Relay
from salmon_app.request import StoredMessage
from salmon_app.storage import engine, models, nodelock, subnodes
from salmon_app.storage.durability import StorageGuard, is_storage_error
from salmon_app.storage.models import Event, Message, Recipient
from salmon_app.storage.spool import Spool

LOG = logging.getLogger("vxgate")

# Which stage's pool runs a message in a given state.
STAGE_OF = {models.STORED: "check", models.CHECKING: "check", models.ANALYSING: "check",
            models.RELAYING: "relay", models.DEFERRED: "relay"}
# Where each kind of message is relayed to.
RELAY_OF = {"smtp": "smtp", "notice": "smtp", "report": "report"}


def _permanent(reply):
    code, text = reply
    return (code if code >= 500 else 554), text


def backoff(initial, maximum):
    """tenacity's jittered exponential wait, used as a schedule (attempt n -> seconds)."""
    wait = tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def delay(attempt):
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = max(1, attempt)
        return wait(state)
    return delay


class Gateway:
    def __init__(self, config, router, checks=None, sockets=None, shares=None):
        self.config, self.router = config, router
        self.sockets = sockets or {}      # listening sockets by mode, inherited from the master (Processes)
        self.shares = shares              # and the sessions each process holds on them
        self.spool = Spool(config.SpoolDir)
        self.database = models.open_database(engine.location(config), busy_timeout=config.DatabaseBusyTimeout,
                                             group_commit=True, several=bool(self.sockets))
        self.node = engine.node_name(config)
        # before anything reads the node's records: a second daemon under this name stops here
        self.node_claim = nodelock.Claim(self.database, self.node)
        try:
            self._build(config, checks)
        except BaseException:
            self.node_claim.release()
            raise

    def _build(self, config, checks):
        self.registry = Registry()
        self.storage = StorageGuard(self.spool, self.registry)
        self.metrics = Metrics(self)
        self.stages = {
            # each check worker starts its hook process at once, not on the first message
            "check": Stage("check", config.SmtpWorkers, config.SmtpQueueSize, self.run_step,
                           prepare=self._prepare_check_worker),
            "relay": Stage("relay", config.SmtpRelayWorkers, config.SmtpQueueSize, self.run_step),
        }
        self.configure(config)
        from salmon_app.checks import Checks   # late: checks may import the gateway's helpers
        self.checks = checks or Checks(self)
        self.servers = [self.make_server(config.SmtpSocket, "smtp")]
        if config.BccSocket:
            self.servers.append(self.make_server(config.BccSocket, "bcc"))
        self.sweeper = None

    def configure(self, config):
        """The parts built from values that may change while running (``reconfigure``)."""
        from salmon_app.policy import RepackPassword
        self.config = config
        self.hostname = config.SmtpHostname or socket.getfqdn()
        self.relays = {"smtp": Relay(config.SmtpSenderRelay, timeout=config.SmtpRelayTimeout,
                                     hostname=self.hostname, tls="off")}
        if config.BccSocket:
            self.relays["report"] = Relay(config.BccSmtpServer, timeout=config.SmtpRelayTimeout, hostname=self.hostname,
                                          username=config.BccReporterAddress or None,
                                          password=config.BccReporterPassword or None, tls=config.BccSmtpTls.lower(),
                                          ca_file=config.BccSmtpCaFile, verify=config.BccSmtpVerifyTls)
        self.retry_delay = backoff(config.SmtpRelayRetryMin, config.SmtpRelayRetryMax)
        self.repack_password = RepackPassword.parse(config.RepackPassword)

    def reconfigure(self, new):
        """Apply a re-read configuration to the running gateway (``salmon_app/reload.py``)."""
        from salmon_app import reload
        return reload.apply(self, new)

    def _prepare_check_worker(self):
        from salmon_app.policy import HookError
        try:
            self.checks.prepare()
        except HookError as exc:     # a user's mistake: one line, and each message meets it again
            LOG.error("SmtpHook does not load: %s", exc)

    def make_server(self, address, mode):
        server = SmtpServer(address, Intake(self, mode), hostname=self.hostname, max_connections=0, sock=self.sockets.get(mode),
                            max_message_size=0, max_recipients=0, max_line=0, idle_timeout=0, name=mode,
                            count_refused=self.metrics.smtp_refused.labels(mode).inc,
                            count_error=self.metrics.smtp_errors.labels(mode).inc,
                            session_ended=engine.release, shares=self.shares)
        self.limit_server(server)
        return server

    def limit_server(self, server):
        """The session limits from the configuration (also when it is reloaded)."""
        config = self.config
        server.hostname = self.hostname
        server.max_connections, server.max_message_size = config.SmtpMaxConnections, config.SmtpMaxMessageSize
        server.max_recipients, server.max_line = config.SmtpMaxRecipients, config.SmtpMaxLineLength
        server.idle_timeout = config.SmtpIdleTimeout
        if server.name == "bcc":
            from salmon_app import bcc
            server.rcpt_check = bcc.recipient_check(config.BccMonitorAddresses)

    # ------------------------------------------------------------ life cycle
    def start(self):
        from salmon_app.storage.recovery import Sweeper, recover
        recover(self)
        for stage in self.stages.values():
            stage.start()
        self.sweeper = Sweeper(self)
        self.sweeper.hooks.append(expiry_hook(lambda: self.config, metrics=self.metrics))
        if not subnodes.is_subnode(self.node):       # one digest per recipient, from the first process
            self.sweeper.hooks.append(digest_hook(lambda: self.config, self.inject))     # QuarantineDigest
        self.checks.start()
        self.sweeper.start()
        for server in self.servers:
            server.start()
        if self.config.MetricsSocket:
            self.metrics.serve(self.config.MetricsSocket)

    def shut_down(self, timeout=30.0):
        """Stop listening, answer waiting sessions, let workers finish; the rest resumes at start."""
        metrics_closed = self.metrics.close_soon()     # its HTTP loop takes up to half a second to end
        for server in self.servers:
            server.stopping.set()
        for _, waiter in self.registry.open_waiters():
            waiter.wake()
        for server in self.servers:
            server.stop(timeout)
        if self.sweeper:
            self.sweeper.stop()
        self.checks.shut_down()
        for stage in self.stages.values():
            stage.stop(timeout)
        for relay in self.relays.values():
            relay.close()
        metrics_closed.join(5)
        # every pooled connection, not only this thread's and the idle ones: the workers'
        # (threads that ended holding one) would stay open on the server
        getattr(self.database, "close_all", self.database.close)()
        models.close_writer()
        self.storage.close()
        self.node_claim.release()

    # ------------------------------------------------------------ moving messages
    def submit(self, item, state):
        """Queue a message (its id, or the StoredMessage in hand) for the stage serving ``state``;
        False leaves it to the sweeper."""
        queue_id = item if isinstance(item, str) else item.queue_id
        if not self.registry.hold(queue_id):
            return False
        if self.stages[STAGE_OF[state]].submit(item):
            return True
        self.registry.release(queue_id)
        return False

    def run_step(self, item):
        """Stage worker body: one step of one message, through Salmon's Router."""
        message = None
        queue_id = item if isinstance(item, str) else item.queue_id
        try:
            if isinstance(item, str):
                row = models.fetch(Message, queue_id)
                if row is None or row.state not in STAGE_OF:
                    return
                message = StoredMessage(self, row)
            else:
                message = item       # handed over in memory by the previous stage: no reload
            message.handled, message.next_state = False, None
            self.router.deliver(message)
            if not message.handled:
                raise RuntimeError("no handler routes %s" % message.To)
        except Exception as exc:
            if message is not None:
                message.next_state = None
            self.internal_error(queue_id, exc)
        finally:
            # the hand-over happens only now, so no two workers ever touch one message at once;
            # a message whose outcome waits in memory for storage stays held (never run again)
            if not (message is not None and message.next_state and self._hand_over(message)) \
                    and not self.storage.holds(queue_id):
                if self.registry.release(queue_id):
                    row = models.fetch(Message, queue_id)
                    if row is not None and row.state in STAGE_OF:
                        self.submit(queue_id, row.state)

    def forward(self, message, state, **fields):
        """Send a held message on to the stage of ``state`` when its current step ends.

        ``fields`` (the hook's action, the verdict) are written with the message's outcome, in
        the same transaction; after a crash the message simply repeats its check."""
        message.pending.update(fields)
        message.state = message.row.state = state
        message.next_state = state

    def _hand_over(self, message):
        if self.stages[STAGE_OF[message.next_state]].submit(message):
            return True
        try:
            models.set_state(message.queue_id, message.next_state, None, **message.pending)   # the sweeper finds it
        except Exception as exc:      # the step repeats from the recorded state once storage works
            message.log.error("could not record the hand-over to %s: %s", message.next_state, exc)
        return False

    def conclude(self, queue_id, state, reply, event, *, remove_file=False, require_session=False,
                 recipients=(), settled=False, mode=None, variant=True, **fields):
        """Record an outcome and give ``reply`` to the waiting session; True if the session got it.

        With ``require_session`` nothing is recorded unless the session takes the reply: a 4xx
        or 5xx that nobody hears must not end a message vxgate already owns. A ``settled``
        outcome (the next hop decided) that cannot be recorded is kept in memory and recorded
        later; the reply still goes out, and the message is never relayed again. ``variant``
        False: the message has no modified copy to remove with its file (known in memory).

        A delivery told to its waiting session is not fsynced before the reply, nor is the
        message's own record (``Waiter.unsynced``: the session does not wait for it): the next
        hop has the message, and records lost with it (a power cut, not a crash: the WAL is
        the kernel's then) leave nothing anyone owns: recovery drops a record never answered
        and removes a file without one, so the message is never sent again (README, Crash
        safety). It spares a pass-through an fsync of the WAL per message.
        """
        lazy = state == models.DELIVERED and remove_file

        def record():
            with models.writing(defer=lazy):     # a deferred commit is written, not yet fsynced
                models.set_state(queue_id, state, event, recipients, last_reply=str(reply) if reply else "",
                                 **dict(fields, has_file=False) if remove_file else fields)
                # PostgreSQL: the nodes' spools are on other machines (one machine's processes
                # find each other's files: quarantine/store.py)
                if state in models.KEPT and not remove_file and models.postgres():
                    models.keep_body(queue_id, self.spool.read(queue_id))   # any node can release it
            if remove_file:
                self.spool.remove(queue_id, variant=variant)

        def guarded():
            self.storage.write(queue_id, record, settled=settled)
            # counted before the session can send the reply: a client that reads /metrics
            # after the reply finds the message counted; a count never stops the reply
            try:
                self.metrics.finished.labels(mode or models.mode_of(queue_id), state).inc()
            except Exception as exc:
                qlog(queue_id).warning("not counted in /metrics: %s", exc)
        waiter = self.registry.waiter(queue_id)

        def telling():      # under the waiter's lock: the session gets the reply
            nonlocal lazy
            # an early 250 tried (and perhaps recorded, its fsync failed) makes the record of
            # the delivery the only thing that says the message is done: it is fsynced first
            lazy = lazy and not waiter.answering
            guarded()
            waiter.unsynced = lazy
        told = bool(waiter and reply and waiter.offer(reply, before=telling))
        if not told:
            if require_session:
                return False
            lazy = False        # nobody was told: the record is all that says the message is done
            guarded()
        if state != models.DELIVERED:     # a delivery has its summary line instead
            qlog(queue_id).info("%s: %s", state, event, extra={"event": state, "fields": {
                "reason": event, "verdict": fields.get("verdict"), "action": fields.get("action")}})
        return told

    def mark_answered(self, queue_id):
        with models.writing():
            models.update_message(queue_id, answered=True, updated=time.time())
            models.log_event(queue_id, "answered", "250 sent before the outcome was known; finishing in the background")

    def session_waiting(self, queue_id):
        waiter = self.registry.waiter(queue_id)
        return bool(waiter and not waiter.closed)

    def internal_error(self, queue_id, exc):
        """Every internal error is temporary: 451 to a waiting session, or a later retry; a
        message vxgate owns that fails SmtpErrorLimit times is set aside and the administrator told."""
        log = qlog(queue_id)
        storage = is_storage_error(exc)
        if engine.is_conflict(exc):     # one transaction lost a deadlock; the database works
            log.warning("database conflict, trying again later: %s", engine.error_text(exc, self.database.vx_location))
        elif storage:
            self.storage.failed(exc)
            log.error("storage error: %s", exc)     # no traceback: the cause is the disk or the lock
        else:
            log.error("internal error: %s", exc, exc_info=exc)
        reason = "internal error: %s: %s" % (type(exc).__name__, exc)
        try:
            # told first: a new message's record may not be written yet (models.insert_message)
            told = self.conclude(queue_id, models.TEMPFAILED, Reply(451, "4.3.0 Internal error, try again later"),
                                 reason, remove_file=True, require_session=True, settled=True)
            if told:
                return
            row = Message.get_by_id(queue_id)
            errors = Event.select().where(Event.message == queue_id, Event.text.startswith("internal error")).count()
            if not storage and errors + 1 >= self.config.SmtpErrorLimit:
                self.conclude(queue_id, models.HELD, None, "%s; failed %d times, set aside (vxgate quarantine "
                              "show %s)" % (reason, errors + 1, queue_id))
                self.notify_admin(row, "set aside after %d internal errors" % (errors + 1), reason, state=models.HELD)
                return
            attempts = row.attempts + 1
            retry_state = row.state if row.state in STAGE_OF else models.STORED
            models.set_state(queue_id, retry_state, reason, attempts=attempts,
                             next_attempt=time.time() + self.retry_delay(attempts))
        except Exception as failure:
            log.error("could not record the internal error (%s); the message stays as it was", failure)

    # ------------------------------------------------------------ decisions
    def apply(self, message, decision, analysis):
        """Carry out the policy's decision (salmon_app/decisions.py)."""
        from salmon_app import decisions
        self.metrics.verdicts.labels((analysis or {}).get("verdict") or "none", decision.action).inc()
        return decisions.apply(self, message, decision, analysis)

    def notify_admin(self, row, what, reason="", fields=None, state=models.QUARANTINED):
        """A short notice to SmtpAdminAddress about a message vxgate kept (never its content).

        ``fields`` are the outcome being recorded (verdict, action, analysis): the record in
        hand may predate them, and a notice must tell the verdict the decision was made on."""
        fields = fields or {}
        qlog(row.id).warning("administrator notice: %s%s", what, " (%s)" % reason if reason else "")
        if not self.config.SmtpAdminAddress:
            return None
        data = dsn.notice(self.hostname, row, what, reason, self.config.SmtpAdminAddress, state=state,
                          verdict=fields.get("verdict") or row.verdict, action=fields.get("action") or row.action,
                          files=analysed_files(fields.get("analysis_json") or row.analysis_json))
        return self.inject("notice", "", [self.config.SmtpAdminAddress], data, parent=row.id,
                           subject="vxgate notice about %s" % row.id)

    # ------------------------------------------------------------ relaying
    def relay(self, message):
        row = message.row
        if row.state == models.DEFERRED and not self._intend_retry(row):
            return
        addresses = message.recipients if message.recipients is not None else models.pending_recipients(row.id)
        params = row.params
        rcpt_params = params.get("rcpt", {})
        relay = self.relays[RELAY_OF[row.mode]]
        started = time.monotonic()
        output = message.output_path()
        with open(output, "rb", buffering=0) as source:     # unbuffered: no isatty and seek
            result = relay.send(row.mail_from, addresses, source, os.fstat(source.fileno()).st_size,
                                mail_params=params.get("mail", {}),
                                rcpt_params=[rcpt_params.get(a, {}) for a in addresses],
                                xforward=message.xforward())
        message.recipients = None          # what is left is read from the record from now on
        now = time.time()
        kinds = result.by_kind()
        ok, temp, perm = kinds["ok"], kinds["temp"], kinds["perm"]
        self._count_replies(row, result, ok, temp)
        if temp and now - row.created > self.config.SmtpRelayMaxAge:
            for address in temp:
                result.replies[address] = (554, "5.4.7 Delivery time expired: " + result.replies[address][1])
            perm, temp = perm + temp, []
        outcome = {a: "delivered" for a in ok}
        outcome.update({a: "deferred" for a in temp})
        outcome.update({a: "bounced" for a in perm})
        recipients = [(a, outcome[a], "%d %s" % result.replies[a]) for a in addresses]
        summary = "%s in %.3fs: %s" % (relay.address, time.monotonic() - started,
                                       "; ".join("%s: %d %s" % (a, *result.replies[a]) for a in addresses))
        fields = dict(message.pending)
        if temp:
            self._defer(message, result, temp, recipients, summary, fields)
            if perm:
                self._bounce_settled(row, [(a, *result.replies[a]) for a in perm])
        elif perm and not ok and not self._delivered_before(row.id) and self.conclude(
                row.id, models.REJECTED, Reply(*_permanent(result.replies[perm[0]])),
                "next hop refused every recipient: " + summary, require_session=True,
                recipients=recipients, settled=True, mode=row.mode, **fields):
            pass    # Postfix got the 5xx and bounces
        else:
            if perm:
                self._bounce_settled(row, [(a, *result.replies[a]) for a in perm])
            final = models.DELIVERED if (ok or self._delivered_before(row.id)) else models.FAILED
            next_hop = result.next_hop_id
            reply = Reply(250, "2.0.0 Ok: queued as %s%s" % (row.id, " (next hop: %s)" % next_hop if next_hop else ""))
            self.conclude(row.id, final, reply, summary, next_hop_id=next_hop or row.next_hop_id, mode=row.mode,
                          remove_file=final == models.DELIVERED and not self.config.KeepDeliveredMessages,
                          variant=message.variant is not False,
                          recipients=recipients, settled=True, **fields)
        message.pending.clear()
        self.summary(message, result, started, fields)

    def _count_replies(self, row, result, ok, temp):
        replies = self.metrics.relay_replies
        destination = RELAY_OF[row.mode]
        for code, _ in result.replies.values():
            replies.labels(destination, reply_class(code)).inc()
        if row.mode == "report":
            self.metrics.bcc_reports.labels("sent" if ok else "deferred" if temp else "failed").inc()

    def _intend_retry(self, row):
        """Before a retry, push the next attempt back durably: a failed record of its outcome can
        then never make the sweeper relay again at once. False (relay nothing) while storage fails."""
        if self.storage.failing:
            return False

        def intent():
            with models.writing():
                models.update_message(row.id, next_attempt=time.time() + self.retry_delay(row.attempts + 1))
        try:
            return self.storage.write(row.id, intent, settled=False)
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            return False

    def _delivered_before(self, queue_id):
        return Recipient.select().where(Recipient.message == queue_id, Recipient.state == "delivered").exists()

    def _defer(self, message, result, temp, recipients, summary, fields):
        row = message.row
        attempts = row.attempts + 1
        delay = self.retry_delay(attempts)
        reason = result.replies[temp[0]][1]
        fields = dict(fields, attempts=attempts, next_attempt=time.time() + delay, last_reply=reason)
        event = "deferred %s for %.1fs: %s" % (", ".join(temp), delay, summary)

        # recipients the next hop took make this a fact: kept in memory if storage fails, never re-sent
        settled = any(state == "delivered" for _, state, _ in recipients)

        def record(answered=False):
            self.storage.write(row.id, lambda: models.set_state(
                row.id, models.DEFERRED, event, recipients, **dict(fields, answered=True) if answered else fields),
                settled=settled)
        waiter = self.registry.waiter(row.id)
        reply = Reply(250, "2.0.0 Ok: queued as %s (next hop deferred, vxgate retries)" % row.id)
        if not (waiter and waiter.offer(reply, before=lambda: record(True))):
            record()
        row.attempts = attempts
        message.log.warning("deferred %s for %.1fs: %s", ", ".join(temp), delay, reason,
                            extra={"event": "deferred", "fields": {"to": temp, "retry_in": round(delay, 1),
                                                                   "attempt": attempts, "reply": reason}})

    def _bounce_settled(self, row, failures):
        # the next hop's refusal is a fact: a bounce that cannot be stored yet waits in memory,
        # ahead of the message's own record, instead of turning the relay into an error
        self.storage.write(row.id, lambda: self.bounce(row, failures), settled=True)

    def bounce(self, row, failures):
        """Tell the sender which recipients failed for good (never for a null sender)."""
        if not row.mail_from:
            qlog(row.id).info("no bounce for the null sender: %s", ", ".join(f[0] for f in failures))
            return None
        data = dsn.build(self.hostname, row, failures, self.headers_of(row.id))
        return self.inject("notice", "", [row.mail_from], data, parent=row.id, subject="Undelivered Mail")

    def headers_of(self, queue_id):
        try:
            with open(self.spool.path(queue_id), "rb") as handle:
                head = handle.read(65536)
        except FileNotFoundError:
            return b""
        end = head.find(b"\r\n\r\n")
        return head[:end + 2] if end >= 0 else head

    def inject(self, mode, mail_from, rcpt_to, data, *, parent=None, subject=""):
        """Store a message vxgate writes itself (a bounce, a report) and start relaying it."""
        queue_id = store_own(self.spool, mode, mail_from, rcpt_to, data, parent=parent, subject=subject, node=self.node)
        qlog(queue_id).info("%s created about %s", mode, parent)
        self.submit(queue_id, models.RELAYING)
        return queue_id

    def summary(self, message, result, started, fields):
        """The one line that answers "what happened to this mail and why" (a field each for Json)."""
        row = message.row
        outcome = "; ".join("%s=%d" % (a, c) for a, (c, _) in result.replies.items())
        verdict, action = fields.get("verdict") or row.verdict, fields.get("action") or row.action or "-"
        files = analysed_files(fields.get("analysis_json") or row.analysis_json)
        took = time.time() - row.created
        client, rcpt_to = row.client, row.rcpt_to
        client = client.get("addr") or client.get("peer_ip") or "-"
        message.log.info("from=<%s> to=%s size=%d client=%s verdict=%s action=%s files=%s outcome=%s next_hop_id=%s "
                         "time=%.3fs", row.mail_from, ",".join("<%s>" % a for a in rcpt_to), row.size, client,
                         verdict, action, ",".join(files) or "-", outcome, result.next_hop_id or "-", took,
                         extra={"event": "summary", "fields": {
                             "from": row.mail_from, "to": rcpt_to, "size": row.size, "client": client,
                             "verdict": verdict, "action": action, "files": files, "outcome": outcome,
                             "next_hop_id": result.next_hop_id, "time": round(took, 3)}})


class Intake:
    """What a receiver calls for each message: open a spool file, then accept or refuse it."""

    def __init__(self, gateway, mode):
        self.gateway, self.mode = gateway, mode
        self.received = gateway.metrics.received.labels(mode)

    def refusal(self):
        """Asked at MAIL FROM: a 451 while the spool or database cannot be written."""
        return self.gateway.storage.refusal()

    def open(self, envelope):
        try:
            return self.gateway.spool.writer(new_queue_id())
        except OSError as exc:
            qlog(None).error("cannot open a spool file: %s", exc)
            if is_storage_error(exc):
                self.gateway.storage.failed(exc)
            raise Reply(451, "4.3.0 Could not store the message, try again later") from None

    def accept(self, envelope, writer):
        gateway, queue_id = self.gateway, writer.queue_id
        log = qlog(queue_id)
        own = self.mode == "bcc"      # a BCC copy is vxgate's at once: nobody waits for its outcome
        waiter = gateway.registry.add_waiter(queue_id) if not own else None
        commit = models.Commit()
        try:
            writer.commit()
            # the record is not written here: the outcome's transaction (or the early answer's)
            # writes it first and makes both durable, before any 250 (``models.insert_message``)
            message, commit = self._record(envelope, writer, answered=own)
            if own:
                commit.wait()      # a BCC copy is answered at once: its record first
            if not gateway.submit(message, models.STORED) and not own:
                commit.wait()      # no room in the check stage: the sweeper finds it in the database
        except Exception as exc:
            if waiter:
                gateway.registry.drop_waiter(queue_id)
            if is_storage_error(exc):
                gateway.storage.failed(exc)
                log.error("could not store the message: %s", exc)
            else:
                log.exception("could not store the message: %s", exc)
            if commit.forget():
                try:
                    gateway.spool.remove(queue_id)
                except OSError:
                    pass
            else:
                # another thread's transaction wrote the record meanwhile: it must not outlive
                # the 451 (kept in memory, after the record, while storage fails)
                gateway.conclude(queue_id, models.DROPPED, None, "refused with 451: %s" % exc,
                                 remove_file=True, settled=True, mode=self.mode)
            return Reply(451, "4.3.0 Could not store the message, try again later")
        self.received.inc()
        client = envelope.xforward.get("ADDR") or envelope.peer[0]
        # DEBUG: on the hot path the summary line (with client=) is the one line per message
        if log.isEnabledFor(logging.DEBUG):     # its arguments cost more than the disabled call
            log.debug("received from=<%s> to=%s size=%d client=%s", envelope.mail_from,
                      ",".join("<%s>" % a for a in envelope.rcpt_to), writer.size, client,
                      extra={"event": "received", "fields": {"from": envelope.mail_from, "to": envelope.rcpt_to,
                                                             "size": writer.size, "client": client}})
        if own:
            return Reply(250, "2.0.0 Ok: queued as %s" % queue_id)
        failed = []

        def answered():
            waiter.answering = True
            try:
                gateway.mark_answered(queue_id)
            except Exception as exc:
                failed.append(exc)
                return False        # the waiter stays open
            return True
        try:
            reply = waiter.wait(gateway.config.SmtpReplyTimeout, on_timeout=answered)
            if failed and not waiter.closed:
                # The 250 cannot be recorded, but the message may be on its way to the next hop
                # right now: a 451 would make the client send it a second time. Wait for its
                # outcome, or until storage works and the 250 is recorded (tried each second).
                log.error("could not record the early answer: %s; waiting for the outcome", failed[0])
                while not waiter.closed and not waiter.woken:
                    reply = waiter.wait(1.0, on_timeout=answered)
        finally:
            gateway.registry.drop_waiter(queue_id)
        if waiter.abandon():        # shutting down with the 250 unrecorded: the client keeps it
            return Reply(451, "4.3.0 Internal error, try again later")
        try:
            if not waiter.unsynced:     # a delivery's records need no fsync (conclude)
                commit.wait()      # at once as a rule: a later durable commit covered it
        except Exception as exc:
            # an outcome that was recorded (or kept in memory as a fact) still goes out, as
            # ``conclude`` has it; this only happens when the disk fails
            gateway.storage.failed(exc)
            log.error("could not make the record durable: %s", exc)
        if reply is None:
            log.info("answered 250 before the outcome; finishing in the background")
            return Reply(250, "2.0.0 Ok: queued as %s" % queue_id)
        return reply

    def _record(self, envelope, writer, answered=False):
        now = time.time()
        client = envelope.client
        params = {"mail": envelope.mail_params, "rcpt": {a: p for a, p in zip(envelope.rcpt_to, envelope.rcpt_params) if p}}
        row, commit = models.insert_message(dict(
            id=writer.queue_id, node=self.gateway.node, mode=self.mode, state=models.STORED, answered=answered, created=now,
            updated=now, mail_from=envelope.mail_from, rcpt_json=json.dumps(envelope.rcpt_to),
            client_json=json.dumps(client), size=writer.size, sha256=writer.sha256, params_json=json.dumps(params),
            body_8bit=str(envelope.mail_params.get("BODY", "")).upper() == "8BITMIME",
            smtputf8=bool(envelope.mail_params.get("SMTPUTF8")), **parse_headers(envelope.headers)),
            envelope.rcpt_to, defer=True)
        # what the JSON columns hold, so that no step parses them again (strings and numbers:
        # the same values as parsed)
        row.remember("rcpt_json", list(envelope.rcpt_to))
        row.remember("client_json", client)
        row.remember("params_json", params)
        message = StoredMessage(self.gateway, row)
        message.recipients = list(envelope.rcpt_to)
        message.variant = False     # a new queue id: no modified copy until the hook makes one
        return message, commit


def analysed_files(analysis_json):
    """["name(type):verdict", ...] from a stored analysis; names cleaned (they are the sender's)."""
    if not analysis_json or analysis_json == "{}":
        return []
    try:
        files = json.loads(analysis_json).get("files") or []
    except (ValueError, AttributeError):
        return []
    return ["%s(%s):%s" % (_printable(f.get("name") or "?"), f.get("type") or "?", f.get("verdict") or "?")
            for f in files if isinstance(f, dict)]


def _printable(text, limit=80):
    # one token of the summary line: no blanks or commas either (they separate the fields)
    return render.clean(str(text)[:limit]).replace(" ", "?").replace(",", "?")


def parse_headers(block):
    """Subject, From and Message-ID for the record."""
    found = headers.fields(block, ("Subject", "From", "Message-ID"))
    return {"subject": found.get("subject", ""), "header_from": found.get("from", ""),
            "message_id": found.get("message-id", "")}
