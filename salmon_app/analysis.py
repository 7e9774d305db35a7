"""vxCube analysis of messages: extraction, dedup, a worker pool, polling, verdicts for the hook.

The check stage calls ``Analyser.analyse(message)``. It extracts the files of the configured
types (or, in Message mode, takes the whole .eml) and records one ``FileCheck`` per file.
Each distinct content is one ``Sample`` row keyed by SHA-256: a cached verdict (VxcubeCacheTtl,
never for unchecked) answers at once, a sample already in flight is simply waited for (a
hundred messages carrying one file cause one upload), and a new one is queued for the vxCube
workers. Workers never sleep on an analysis: each call does one step (look up, upload, start,
poll) and sets ``next_step``; the sweeper hands due samples back to them. When a sample ends,
every message waiting on it whose files are all decided goes back to the check stage.
Everything is in the database, so a restart resumes where it stopped and never re-uploads.

A file that is not analysed is ``unchecked`` with a cause (``verdict.CAUSES``), stored at the
head of its reason ("quota: ..."): parts the extractor cannot open, files beyond
VxcubeMaxFiles, uploads beyond a sender's or client's VxcubeUploadBudget, an exhausted
licence, vxCube errors (malformed replies included) and time-outs. The message's cause, and
for outages how long the content has been held, go to the hook with the analysis.
"""
import json
import logging
import random
import time

import peewee

from salmon_app import headers
from salmon_app.storage import models
from salmon_app.log import qlog
from salmon_app.storage.models import FileCheck, Message, Sample
from salmon_app.pipeline import Stage
from salmon_app.quarantine import render
from salmon_app.verdict import OUTAGE, Verdict, cause_kind, cause_of, task_verdict, with_cause, worst_cause
from salmon_app.vxcube.budget import UploadBudget, budget_keys
from salmon_app.vxcube.client import RetryPolicy, VxcubeClient, VxcubeError
from salmon_app.vxcube.extract import describe, extract, not_analysable_reason

LOG = logging.getLogger("vxgate.analysis")
FINISHED_TASK = ("successful", "failed", "deleted")
FORGOTTEN_AFTER = 10.0      # seconds a sample may be done before its waiting checks get their result
MESSAGE_SAMPLE = "message"        # FileCheck.path of a whole-message upload awaiting its split
WAITING_STATES = (models.STORED, models.CHECKING, models.ANALYSING)   # a message a sample may wake




class Analyser:
    def __init__(self, gateway):
        config = gateway.config
        self.gateway = gateway
        self.enabled = bool(config.UseVxcube)
        self.stage = Stage("vxcube", config.VxcubeWorkers, config.VxcubeQueueSize, self.step)
        self.metrics = gateway.metrics
        self.due = {}       # sha256 -> when to poll next (in memory, see later())
        self.polls = {}     # sha256 -> polls or failed calls so far (for the back-off)
        self.failing = {}   # sha256 -> the error last logged for it: one log line per change
        self.next_adoption = 0.0   # when to look for samples of a stopped node (vxcube/adoption.py)
        self.configure(config)

    def configure(self, config):
        """What a reload may change: the vxCube server, key, time-outs, file types, limits."""
        self.config = config
        self.types = {t.lower() for t in config.VxcubeFileTypes}
        self.client = None
        if self.enabled:
            verify = config.VxcubeCaFile or config.VxcubeVerifyTls
            self.client = VxcubeClient(config.VxcubeApiAddress, config.VxcubeApiKey,
                                       timeout=config.VxcubeRequestTimeout, verify=verify,
                                       retry=RetryPolicy(attempts=config.VxcubeRetryAttempts,
                                                         initial=config.VxcubeRetryMin,
                                                         maximum=config.VxcubeRetryMax,
                                                         max_elapsed=config.VxcubeRequestTimeout * config.VxcubeRetryAttempts
                                                         + config.VxcubeRetryMax * config.VxcubeRetryAttempts),
                                       metrics=self.metrics)
        budget = getattr(self, "budget", None)
        if budget is None or (budget.limit, budget.window) != (config.VxcubeUploadBudget, config.VxcubeUploadBudgetWindow):
            self.budget = UploadBudget(config.VxcubeUploadBudget, config.VxcubeUploadBudgetWindow)

    # ------------------------------------------------------------ life cycle
    def start(self):
        if self.enabled:
            self.stage.start()
            self.gateway.sweeper.hooks.append(self.sweep)

    def shut_down(self):
        if self.enabled:
            self.stage.stop()
            self.client.close()

    def sweep(self):
        now = time.time()
        if models.shared() and now >= self.next_adoption:
            from salmon_app.vxcube.adoption import adopt
            self.next_adoption = now + 10
            adopt(self, now)
        # a poll leaves next_step as it was (see later()): every pending analysis comes back
        # here each round, so this is one plain statement, not a peewee query of model rows
        for sha256 in models.due_samples(self.gateway.node, now, 2000):
            if self.due.get(sha256, 0) <= now:
                self.submit(sha256)

    def later(self, sample, delay):
        """Come back to a sample after about ``delay``: kept in memory, since a poll that changes
        nothing must not cost a commit (after a restart every sample is simply polled at once).
        Spread by ±20%: analyses that a burst of mail started together would otherwise be
        polled together ever after, a burst of calls on the core the mail is handled on."""
        self.due[sample.sha256] = time.time() + delay * random.uniform(0.8, 1.2)

    def submit(self, sha256):
        registry = self.gateway.registry
        key = "sample:" + sha256
        if registry.hold(key) and not self.stage.submit(sha256):
            registry.release(key)

    # ------------------------------------------------------------ per message
    def analyse(self, message):
        """The message's analysis dict, or None while some of its files are still analysed."""
        if not self.enabled:
            return {}
        queue_id = message.queue_id
        if message.state == models.STORED and not self._start_message(message):
            return {}     # nothing to analyse: no query, no write
        checks = list(FileCheck.select().where(FileCheck.message == queue_id).order_by(FileCheck.id))
        if message.state == models.ANALYSING and any(not c.verdict for c in checks) \
                and self._forgotten(queue_id, time.time()):
            # the sample ended between this message's look at it and its commit, so the node
            # that finished it never saw these checks: start again
            message.log.warning("a file check missed the verdict of its sample; checking the files again")
            self._start_message(message)
            checks = list(FileCheck.select().where(FileCheck.message == queue_id).order_by(FileCheck.id))
        if any(not c.verdict for c in checks):
            if message.state != models.ANALYSING:
                models.set_state(queue_id, models.ANALYSING, "waiting for vxCube")
                message.state = models.ANALYSING
            return None
        analysis = summarise(checks)
        if cause_kind(analysis["cause"]) == OUTAGE:
            held = time.time() - first_seen(message.row, self.config.VxcubeMaxHold)
            analysis.update(held=round(held, 3), hold_expired=held >= self.config.VxcubeMaxHold)
        analysis["hold_fallback"] = self.config.VxcubeHoldFallback.lower()
        return analysis

    @staticmethod
    def _forgotten(queue_id, now):
        """True when a check of the message still waits for a sample that ended a while ago or is
        gone. One statement, so a sample being split or finished right now is not taken for one."""
        return FileCheck.select(FileCheck.id).where(FileCheck.message == queue_id, FileCheck.verdict == "",
                                                    ~peewee.fn.EXISTS(live_sample(now))).exists()

    def _start_message(self, message):
        """Record the message's files and make sure each has a sample decided or on its way."""
        raw = message.data()
        if not may_carry_files(raw):
            return False
        if self.config.VxcubeSendMode == "Message":
            items = [_WholeMessage(raw, message.queue_id)]
            problems = []
        else:
            extraction = extract(raw, self.types)
            items, problems = extraction.selected, extraction.problems
        for problem in problems:
            message.log.warning("extraction: %s", problem)
        if not items:
            return False
        now = time.time()
        beyond = _beyond_limit(items, self.config.VxcubeMaxFiles)
        for item in items:    # content first, outside the write lock: fsync is slow
            known = Sample.get_or_none(Sample.sha256 == item.sha256)
            if (known is None or known.state == "done") and not item.cause and item.sha256 not in beyond:
                self.gateway.spool.store_sample(item.sha256, item.content)
        to_queue = []
        spenders = budget_keys(message.row)
        with models.writing():
            models.lock_samples(item.sha256 for item in items)
            FileCheck.delete().where(FileCheck.message == message.queue_id).execute()
            for item in items:
                check = FileCheck(message=message.queue_id, path=item.path, name=item.name,
                                  type=item.detected_type, size=item.size, sha256=item.sha256)
                cause = _cause_before_upload(item, beyond, self.config.VxcubeMaxFiles)
                sample = Sample.get_or_none(Sample.sha256 == item.sha256)
                if cause:
                    check.verdict, check.reason = Verdict.UNCHECKED.label, with_cause(*cause)
                elif sample and sample.state == "done" and _fresh(sample, now, self.config.VxcubeCacheTtl):
                    _copy_result(check, sample)
                    check.cached = True
                    self.metrics.vxcube_cache_hits.labels("local").inc()
                elif (sample is None or sample.state == "done") and not self.budget.spend(spenders, now):
                    check.verdict, check.reason = Verdict.UNCHECKED.label, with_cause(
                        "budget", "%s used up its %d uploads per %s" % (
                            self.budget.exhausted(spenders, now), self.budget.limit, render.duration(self.budget.window)))
                else:
                    if sample is None or sample.state == "done":
                        if sample:
                            sample.delete_instance()
                        # nodes sharing the database may meet here at the same moment: one row
                        # wins, and only its node uploads; the others wait for its verdict
                        Sample.insert(sha256=item.sha256, state="queued", name=item.name, node=self.gateway.node,
                                      kind=getattr(item, "kind", "file"), created=now,
                                      next_step=now).on_conflict_ignore().execute()
                        # stored before the lock, but the sample that ended meanwhile took it along
                        self.gateway.spool.store_sample(item.sha256, item.content)
                        sample = Sample.get_or_none(Sample.sha256 == item.sha256)
                    if sample is not None and sample.node == self.gateway.node:
                        to_queue.append(item.sha256)
                check.save()
                if check.verdict == Verdict.UNCHECKED.label:
                    self.metrics.unchecked.labels(cause_of(check.reason, check.verdict)).inc()
                message.log.info("file %s: %s", describe(item) if item.path != MESSAGE_SAMPLE else "whole message",
                                 check.verdict + (" (cached)" if check.cached else "") if check.verdict else "queued for vxCube")
        for sha256 in to_queue:
            self.submit(sha256)
        return bool(items)

    # ------------------------------------------------------------ per sample (vxCube workers)
    def step(self, sha256):
        key = "sample:" + sha256
        try:
            sample = models.fetch(Sample, sha256)
            if sample is None or sample.state == "done":
                return
            try:
                getattr(self, "_" + sample.state)(sample)
            except VxcubeError as exc:
                self._failed_call(sample, exc)
        except Exception as exc:
            # A bug, not vxCube: the traceback once per sample and error, then the same
            # bound as any failure (VxcubeTimeout), so no message waits forever on it.
            if self._changed(sha256, "internal error: %s" % exc):
                self._log(sha256, logging.ERROR, "analysis step failed; retrying later", exc_info=True)
            sample = models.fetch(Sample, sha256)
            if sample is not None and time.time() - sample.created > self.config.VxcubeTimeout:
                self._finish(sample, Verdict.UNCHECKED, reason=with_cause("vxcube-error", "internal error: %s" % exc))
            else:
                Sample.update(next_step=time.time() + self.config.VxcubePollInterval).where(
                    Sample.sha256 == sha256).execute()
        finally:
            self.gateway.registry.release(key)

    def _queued(self, sample):
        """Look the content up at vxCube, upload it only if vxCube does not have it."""
        found = self.client.find_sample(sample.sha256) if sample.kind == "file" else None
        if found:
            samples = [found]
            self.metrics.vxcube_cache_hits.labels("lookup").inc()
        else:
            data = self.gateway.spool.read_sample(sample.sha256)
            if data is None:
                return self._finish(sample, Verdict.UNCHECKED,
                                    reason=with_cause("vxcube-error", "file content lost before upload"))
            try:
                samples = self.client.upload(sample.name or sample.sha256, data)
            except VxcubeError as exc:
                if exc.transient or not self._licence_spent():
                    raise
                return self._finish(sample, Verdict.UNCHECKED, reason=with_cause(
                    "quota", "the vxCube licence has no uploads left (%s)" % exc))
            sample.uploaded = True
            self.metrics.vxcube_uploads.inc()
        if sample.kind == MESSAGE_SAMPLE:
            return self._split(sample, samples)
        self._uploaded_as(sample, samples[0])

    def _uploaded_as(self, sample, info):
        sample.sample_id = str(info.get("id", ""))
        sample.format_name = info.get("format_name") or ""
        sample.platforms = json.dumps(info.get("platforms") or [])
        sample.state = "uploaded"
        sample.next_step = time.time()
        sample.save()
        self._uploaded(sample)

    def _uploaded(self, sample):
        platforms = self.config.VxcubePlatforms or json.loads(sample.platforms)
        if not (sample.format_name and platforms):
            return self._finish(sample, Verdict.UNCHECKED,
                                reason=with_cause("unsupported", "vxCube does not recognise its format"))
        analysis = self.client.start_analysis(sample.sample_id, platforms=platforms,
                                              analysis_time=int(self.config.VxcubeAnalysisTime))
        sample.analysis_id, sample.state = str(analysis["id"]), "analysing"
        sample.started = time.time()
        # vxCube runs the sample for the time asked before it can say anything but a failure:
        # a poll before then is a call for nothing, and the polls of a burst of mail would
        # come together on the mail's core. So the first poll is after that time (spread
        # upwards by up to 20%, never before); a task that failed at once is known then.
        first = self.config.VxcubeAnalysisTime
        sample.next_step = sample.started + first
        sample.save()
        self.due[sample.sha256] = sample.started + first * random.uniform(1.0, 1.2)
        self._log(sample.sha256, logging.INFO, "analysis %s started on %s", sample.analysis_id, ", ".join(platforms))

    def _analysing(self, sample):
        analysis = self.client.get_analysis(sample.analysis_id)
        self._recovered(sample)
        tasks = analysis["tasks"]      # the client checked the shape of the reply
        now = time.time()
        if tasks and all(t.get("status") in FINISHED_TASK for t in tasks):
            verdict = Verdict.worst(task_verdict(t) for t in tasks)
            scores = [t.get("maliciousness") for t in tasks if t.get("maliciousness") is not None]
            return self._finish(sample, verdict, tasks=tasks, maliciousness=max(scores) if scores else None,
                                reason="" if verdict != Verdict.UNCHECKED else with_cause(
                                    "vxcube-error", "analysis failed or deleted on %s" % ", ".join(
                                        str(t.get("platform_code") or "?") for t in tasks
                                        if task_verdict(t) == Verdict.UNCHECKED)))
        if now - (sample.started or sample.created) > self.config.VxcubeTimeout:
            return self._finish(sample, Verdict.UNCHECKED, tasks=tasks,
                                reason=with_cause("timeout", "analysis did not finish in %s" % render.duration(self.config.VxcubeTimeout)))
        interval, polls = self.config.VxcubePollInterval, self.polls.get(sample.sha256, 0) + 1
        self.polls[sample.sha256] = polls
        self.later(sample, min(interval * 2 ** min(polls, 3), interval * 6))

    def _split(self, sample, samples):
        """A whole-message upload: vxCube returned the files it found; analyse each of them."""
        now = time.time()
        with models.writing():
            models.lock_samples([sample.sha256] + [info.get("sha256", "") for info in samples])
            waiting = list(FileCheck.select().where(FileCheck.sha256 == sample.sha256, FileCheck.verdict == ""))
            for info in samples:
                child = Sample.get_or_none(Sample.sha256 == info.get("sha256"))
                for check in waiting:
                    FileCheck.create(message=check.message, path="", name=info.get("name", ""),
                                     type=info.get("format_name") or "", size=info.get("size") or 0,
                                     sha256=info.get("sha256", ""))
                if child is None:
                    Sample.insert(sha256=info["sha256"], state="uploaded", name=info.get("name", ""),
                                  sample_id=str(info.get("id", "")), format_name=info.get("format_name") or "",
                                  platforms=json.dumps(info.get("platforms") or []), created=now, node=self.gateway.node,
                                  next_step=now, uploaded=True, parent=sample.sha256).on_conflict_ignore().execute()
            for check in waiting:
                check.delete_instance()
            sample.delete_instance()
        for info in samples:
            self.submit(info["sha256"])
        # children already decided (cache) complete their messages now
        for info in samples:
            child = Sample.get_or_none(Sample.sha256 == info["sha256"])
            if child and child.state == "done":
                self._deliver_result(child)
        if not samples:
            for check in waiting:
                self._resume(check.message)

    def _failed_call(self, sample, exc):
        now = time.time()
        if exc.transient and now - sample.created < self.config.VxcubeTimeout:
            if self._changed(sample.sha256, str(exc)):
                self._log(sample.sha256, logging.WARNING, "vxCube unavailable (%s); trying again", exc)
            failures = self.polls.get(sample.sha256, 0) + 1
            self.polls[sample.sha256] = failures
            self.later(sample, min(self.config.VxcubePollInterval * 2 ** min(failures, 4), 300))
            return
        self._finish(sample, Verdict.UNCHECKED, reason=with_cause("vxcube-error", "vxCube error: %s" % exc))

    def _log(self, sha256, level, text, *args, exc_info=False):
        """A line about a sample names the messages that wait for it (their queue ids), so
        ``grep QUEUEID`` finds it; the first id is the line's queue_id in LogFormat = Json."""
        try:
            ids = sorted({c.message for c in FileCheck.select(FileCheck.message).where(
                FileCheck.sha256 == sha256, FileCheck.verdict == "")})
        except Exception:      # storage failing: the line still goes out
            ids = []
        shown = ",".join(ids[:5]) + (" +%d more" % (len(ids) - 5) if len(ids) > 5 else "")
        LOG.log(level, "sample %s (for %s): " + text, sha256[:16], shown or "no message", *args, exc_info=exc_info,
                extra={"queue_id": ids[0] if ids else "-", "event": "sample",
                       "fields": {"sample": sha256, "queue_ids": ids}})

    def _changed(self, sha256, error):
        """Whether ``error`` is news for this sample (then it is logged, else not again)."""
        if self.failing.get(sha256) == error:
            return False
        self.failing[sha256] = error
        return True

    def _recovered(self, sample):
        if self.failing.pop(sample.sha256, None) is not None:
            self._log(sample.sha256, logging.INFO, "vxCube answers again")

    def _licence_spent(self):
        """Whether the licence has no uploads left: vxCube documents no error for a spent
        quota, so a refused upload is checked against GET license."""
        try:
            licence = self.client.license()
        except VxcubeError:
            return False
        spent, total = licence.get("uploads_spent"), licence.get("uploads_total")
        return isinstance(spent, int) and isinstance(total, int) and spent >= total

    def _finish(self, sample, verdict, *, tasks=(), maliciousness=None, reason=""):
        self.due.pop(sample.sha256, None)
        self.polls.pop(sample.sha256, None)
        self.failing.pop(sample.sha256, None)
        sample.state, sample.verdict, sample.reason = "done", verdict.label, reason
        sample.tasks_json = json.dumps(list(tasks))
        sample.maliciousness = maliciousness
        sample.finished = time.time()
        # logged first: the line names the messages still waiting for this sample
        self._log(sample.sha256, logging.INFO, "%s%s", verdict.label, " (%s)" % reason if reason else "")
        self._deliver_result(sample, save=True, forget=verdict == Verdict.UNCHECKED)
        if verdict == Verdict.UNCHECKED:
            self.metrics.unchecked.labels(cause_of(reason, verdict.label)).inc()
        elif sample.started:
            self.metrics.analysis_seconds.observe(sample.finished - sample.started)

    def _deliver_result(self, sample, save=False, forget=False):
        """Give a decided sample's verdict to every check waiting for it, then resume the
        messages it completes. With ``save`` the sample's end is recorded in the same
        transaction, and its content removed; with ``forget`` (a failure, never cached) its
        row is deleted there too, so a copy arriving meanwhile claims a new one after it."""
        with models.writing():
            models.lock_samples([sample.sha256])
            if save:
                sample.save()
            waiting = list(FileCheck.select().where(FileCheck.sha256 == sample.sha256, FileCheck.verdict == ""))
            for check in waiting:
                _copy_result(check, sample)
                check.save()
            if forget:
                sample.delete_instance()
            if save:
                self.gateway.spool.remove_sample(sample.sha256)
        for queue_id in {c.message for c in waiting}:
            self._resume(queue_id)

    def _resume(self, queue_id):
        if not FileCheck.select().where(FileCheck.message == queue_id, FileCheck.verdict == "").exists():
            row = models.fetch(Message, queue_id)
            # another node's message: its own sweeper resumes it (it holds the file). One still
            # stored or checking is resumed too: its check worker may have read the checks before
            # this sample ended and be about to record it analysing, which the sweeper looks at
            # only once a minute; the registry runs it once more when that worker lets it go.
            if row is not None and row.state in WAITING_STATES and row.node == self.gateway.node:
                qlog(queue_id).info("analyses finished")
                self.gateway.submit(queue_id, row.state)


def live_sample(now):
    """The sample a pending FileCheck (of the outer query) may still get its verdict from: one
    not done, or done so recently that its results are being handed out right now."""
    return Sample.select(Sample.sha256).where(
        Sample.sha256 == FileCheck.sha256, (Sample.state != "done") | (Sample.finished > now - FORGOTTEN_AFTER))


def may_carry_files(raw):
    """False for a single-part text message (most mail): no parse, no upload is needed.

    Only the top header block is looked at; anything multipart, non-text, named or marked as
    an attachment is extracted as usual, and so is a text that may hold a uuencoded file or
    a header with two Content-Type fields (which one a mail program obeys is anyone's guess)."""
    end = raw.find(b"\r\n\r\n")
    head = raw[:end + 2] if end >= 0 else raw
    found = headers.fields(head, ("Content-Type", "Content-Disposition"))
    ctype = found.get("content-type", "text/plain").strip().lower()
    # the parameters are looked for in the raw block: the field values above are cut at 500
    # characters for display, and a long first parameter must not hide a name=evil.exe after it
    lower = head.lower()
    return not ctype.startswith("text/") or b"name=" in lower or b"name*" in lower \
        or b"attachment" in lower or b"\nbegin " in raw or b"\nbegin-base64 " in raw \
        or lower.count(b"content-type:") > 1


def first_seen(row, max_hold):
    """When this content first reached vxgate: Postfix hands a deferred message over again
    as a new record with the same bytes, and the hold counts from the first of them."""
    oldest = (Message.select(Message.created)
              .where(Message.created >= row.created - 2 * max_hold - 60, Message.sha256 == row.sha256,
                     Message.mode == row.mode)
              .order_by(Message.created).limit(1).scalar())
    return min(oldest or row.created, row.created)


def _beyond_limit(items, limit):
    """SHA-256s of the distinct contents past the first ``limit`` ones (MIME order)."""
    distinct = list(dict.fromkeys(item.sha256 for item in items if not item.cause))
    return set(distinct[limit:])


def _cause_before_upload(item, beyond, limit):
    """(cause, text) when ``item`` is not to be uploaded at all, else None."""
    if item.path == MESSAGE_SAMPLE:
        return None
    if item.cause:
        return item.cause, item.cause_text
    reason = not_analysable_reason(item)
    if reason:
        return "unsupported", reason
    if item.sha256 in beyond:
        return "too-many-files", "the message has more than VxcubeMaxFiles = %d files" % limit
    return None


def _fresh(sample, now, ttl):
    return sample.verdict and sample.verdict != Verdict.UNCHECKED.label and now - sample.finished < ttl


def _copy_result(check, sample):
    check.verdict, check.maliciousness = sample.verdict, sample.maliciousness
    check.analysis_id, check.tasks_json = sample.analysis_id, sample.tasks_json
    check.reason = sample.reason


class _WholeMessage:
    """The whole .eml as one upload (VxcubeSendMode = Message)."""
    kind = MESSAGE_SAMPLE
    path = MESSAGE_SAMPLE
    detected_type = "eml"
    cause = ""

    def __init__(self, raw, queue_id):
        import hashlib
        self.content, self.size = raw, len(raw)
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.name = queue_id + ".eml"


def summarise(checks):
    """The analysis dict given to the hook and stored with the message."""
    files = []
    for check in checks:
        tasks = json.loads(check.tasks_json or "[]")
        files.append({
            "name": check.name, "type": check.type, "size": check.size, "sha256": check.sha256,
            "path": check.path, "verdict": check.verdict, "maliciousness": check.maliciousness,
            "analysis_id": check.analysis_id, "reason": check.reason, "cached": check.cached,
            "tasks": [{"platform": t.get("platform_code", ""), "status": t.get("status", ""),
                       "verdict": t.get("verdict") or "none", "maliciousness": t.get("maliciousness"),
                       "rules": t.get("rules") or {"malicious": [], "suspicious": [], "neutral": []},
                       "id": t.get("id")} for t in tasks],
        })
    for f in files:
        f["cause"] = cause_of(f["reason"], f["verdict"]) if f["verdict"] == Verdict.UNCHECKED.label else ""
    verdict = Verdict.worst(Verdict.parse(f["verdict"]) for f in files)
    counts = {v.label: sum(1 for f in files if f["verdict"] == v.label) for v in Verdict if v != Verdict.NONE}
    cause = worst_cause(f["cause"] for f in files)
    return {"verdict": verdict.label, "files": files, "counts": counts, "cause": cause,
            "cause_kind": cause_kind(cause)}
