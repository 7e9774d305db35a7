"""``HookRuntime``: one compiled hook in one Lua state, run once per message.

A runtime belongs to one worker thread (Lua states are not shared); in the daemon it lives
in that worker's hook process (``process.py``), which bounds what the limits here cannot.
``run`` never raises for anything the hook does: a Lua error, a bad result table, the time
or memory limit all give ``Decision(on_error, error=True, reason=...)`` and a log line, and
the runtime stays usable (a state that failed in its own host code is rebuilt from the last
good source). A hook read from a file is reloaded when the file changes (checked at most
once a second); a version that does not load is logged and the previous one kept.
"""
import logging
import os
import time

import lupa.lua54 as lua54

from salmon_app.verdict import Verdict

from . import context, result, sandbox
from .modify import NO_PASSWORD, RepackPassword
from .result import Decision, HookError

log = logging.getLogger("vxgate.policy")

RELOAD_CHECK_INTERVAL = 1.0
_RANKS = {v.label: int(v) for v in Verdict}


def is_source(hook_spec):
    """True if ``SmtpHook`` holds Lua code, False if it names a file."""
    return "smtp_hook" in hook_spec and ("\n" in hook_spec or "(" in hook_spec)


def check_limits(memory_limit, time_limit, on_error):
    """ValueError for limits no runtime can work with (a programming error, not the hook's)."""
    if on_error not in result.ON_ERROR_ACTIONS:
        raise ValueError("on_error must be one of %s, not %r"
                         % (", ".join(result.ON_ERROR_ACTIONS), on_error))
    if memory_limit < 4 * context.MEMORY_RESERVE or not time_limit > 0:
        raise ValueError("a hook needs memory_limit >= 4 MB and a positive time_limit")


def failure(queue_id, on_error, reason):
    """The Decision for a hook that failed, logged with its reason."""
    log.warning("%s: hook failed, answering %s: %s", queue_id or "-", on_error, reason)
    return Decision(on_error, error=True, reason=str(reason).split("\n", 1)[0])


class HookRuntime:
    def __init__(self, hook_spec, memory_limit=64 * 2**20, time_limit=5.0, on_error="tempfail",
                 list_dir=None, source=None):
        """``list_dir``: the only folder ``drweb.load_array``/``load_set`` read (``SmtpHookLists``);
        None means the hook file's folder (no lists for inline code), "" no lists at all.
        ``source``: the code to start with instead of reading the hook file now (a version
        that loaded before; the file is still checked for changes)."""
        check_limits(memory_limit, time_limit, on_error)
        self.memory_limit, self.time_limit, self.on_error = memory_limit, time_limit, on_error
        self.path = None if is_source(hook_spec) else os.path.abspath(hook_spec)
        self._source = hook_spec.encode() if self.path is None else None
        self._chunkname = b"=SmtpHook" if self.path is None else b"@" + self.path.encode()
        self._mtime, self._checked, self._broken = None, time.monotonic(), False
        if list_dir is None:
            list_dir = os.path.dirname(self.path) if self.path else ""
        self._bridge = context.Bridge(list_dir and os.path.abspath(list_dir), memory_limit)
        source = self._read() if source is None else source
        self._host = self._new_host()
        self._hook = self._compile(source)
        self._source = source

    @property
    def source(self):
        """The code in force (bytes)."""
        return self._source

    # --- loading -----------------------------------------------------------------------

    def _new_host(self):
        host = sandbox.Host(self.memory_limit, self._bridge.callbacks(), _RANKS)
        self._bridge.memory_left = host.memory_left
        return host

    def _read(self):
        if self.path is None:
            return self._source
        try:
            self._mtime = os.stat(self.path).st_mtime_ns   # before reading: never miss a write
            with open(self.path, "rb") as stream:
                return stream.read()
        except OSError as exc:
            raise HookError("SmtpHook: cannot read %s (%s); it must be Lua code defining "
                            "smtp_hook(ctx) or the path of a .lua file" % (self.path, exc.strerror))

    def _compile(self, source):
        try:
            ok, value = self._host.compile_chunk(source, self._chunkname,
                                                 time.monotonic() + self.time_limit)
        except lua54.LuaError as exc:   # the state failed in its own code: replace it
            self._broken = True
            raise HookError("the hook could not be loaded: %s" % exc) from None
        if not ok:
            raise HookError(sandbox.to_python(value))
        return value

    def reload(self):
        """Re-read and recompile the hook; keep the old one if that fails. True if replaced."""
        try:
            source = self._read()
            hook = self._compile(source)
        except HookError as exc:
            log.error("hook %s not reloaded, the previous version stays: %s",
                      self.path or "(inline)", exc)
            return False
        self._hook, self._source = hook, source
        log.info("hook %s loaded", self.path or "(inline)")
        return True

    def _maybe_reload(self):
        now = time.monotonic()
        if self.path is None or now - self._checked < RELOAD_CHECK_INTERVAL:
            return
        self._checked = now
        try:
            changed = os.stat(self.path).st_mtime_ns != self._mtime
        except OSError:
            changed = False   # a file being replaced; the next check sees the new one
        if changed:
            self.reload()

    # --- running -----------------------------------------------------------------------

    def run(self, envelope, raw, analysis):
        """The Decision of the hook for one message (bytes, or a MessageFile read on first use) and its analysis dict."""
        # Creating ctx needs free memory in the state (see context.MEMORY_RESERVE); a hook
        # whose globals fill it is started afresh.
        if self._broken or self._host.memory_left() < 2 * context.MEMORY_RESERVE:
            self._rebuild()
        self._maybe_reload()
        queue_id = envelope.queue_id
        view = context.lua_view(envelope, analysis)
        self._bridge.start(raw, queue_id)
        try:
            try:
                out = self._host.run_hook(time.monotonic() + self.time_limit, self._hook, self._host.table(view))
            except lua54.LuaError as exc:   # the state itself failed, not the hook
                self._broken = True
                return self._failed(queue_id, "the Lua state failed: %s" % exc)
            if not out[0]:
                return self._failed(queue_id, sandbox.to_python(out[1]))
            res, ops, password, message = (sandbox.to_python(v) for v in out[1:5])
            try:
                return self._decide(res, ops, password, message)
            except HookError as exc:
                return self._failed(queue_id, str(exc))
        finally:
            self._bridge.finish()
            self._tidy()

    def _decide(self, res, ops, password, message):
        decision = result.decision_from_result(res, ops)
        if password is not None and not isinstance(password, (str, int, float)):
            raise HookError("modifier.repack_password must be a string")
        if not isinstance(message, (str, type(None))):
            raise HookError("modifier.repack_message must be a string")
        for op in decision.modifications:
            if op["op"] != "repack":
                continue
            if op["path"] and self._bridge.message.part_at(op["path"]) is None:
                raise HookError("no MIME part at path %r to repack" % op["path"])
            # "" switches the protection off; nil keeps the configured RepackPassword.
            op["password"] = None if password is None else \
                RepackPassword("Plain", str(password)) if str(password) else NO_PASSWORD
            op["message"] = message or ""
        return decision

    def _failed(self, queue_id, reason):
        return failure(queue_id, self.on_error, reason)

    def _tidy(self):
        # Lua's collector paces itself on the state's own growth; a big message can leave
        # tens of megabytes behind that the next one would count against its limit.
        try:
            if self._host.memory_used() > self.memory_limit // 4:
                self._host.collect()
        except lua54.LuaError:
            self._broken = True

    def _rebuild(self):
        log.warning("rebuilding the Lua state of hook %s", self.path or "(inline)")
        self._host, self._broken = self._new_host(), False
        try:
            self._hook = self._compile(self._source)
        except HookError as exc:   # it loaded before: only a hook that changed its mind
            log.error("hook %s does not load any more: %s", self.path or "(inline)", exc)
            self._hook = None
