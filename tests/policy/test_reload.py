"""Hook files: reloading by hand and on change, and keeping the old hook when the new one is broken."""
import os

import pytest
from support.policy_data import PLAIN

from salmon_app.policy import HookRuntime, runtime as runtime_module

HOOK = "function smtp_hook(ctx) return {action = 'reject', message = '%s'} end\n"


@pytest.fixture
def hook_file(tmp_path):
    path = tmp_path / "hook.lua"
    path.write_text(HOOK % "v1")
    return path


def _write(path, text, tick):
    path.write_text(text)
    os.utime(path, ns=(tick, tick))   # mtime granularity must not hide the change


def test_reload_with_a_syntax_error_keeps_the_old_hook(hook_file, envelope, caplog):
    runtime = HookRuntime(str(hook_file))
    _write(hook_file, "function smtp_hook(ctx) return {action = ", 1)
    assert runtime.reload() is False
    assert "not reloaded" in caplog.text and "hook.lua:1:" in caplog.text
    assert runtime.run(envelope, PLAIN, {}).message == "v1"
    _write(hook_file, HOOK % "v2", 2)
    assert runtime.reload() is True
    assert runtime.run(envelope, PLAIN, {}).message == "v2"


def test_changed_file_is_reloaded_at_most_once_a_second(hook_file, envelope, monkeypatch):
    runtime = HookRuntime(str(hook_file))
    _write(hook_file, HOOK % "v2", 1)
    assert runtime.run(envelope, PLAIN, {}).message == "v1"   # checked less than 1 s ago
    monkeypatch.setattr(runtime_module, "RELOAD_CHECK_INTERVAL", 0)
    assert runtime.run(envelope, PLAIN, {}).message == "v2"
    _write(hook_file, "syntax error here", 2)
    assert runtime.run(envelope, PLAIN, {}).message == "v2"
    hook_file.unlink()   # a file being replaced: keep going with what is loaded
    assert runtime.run(envelope, PLAIN, {}).message == "v2"


def test_inline_code_and_path_are_told_apart(hook_file):
    assert HookRuntime(str(hook_file)).path == str(hook_file)
    assert HookRuntime(HOOK % "x").path is None
