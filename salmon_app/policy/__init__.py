"""The Lua policy engine: administrator-written hooks decide what happens to each message.

``HookRuntime`` loads a hook (``SmtpHook``: Lua code or a .lua file) into a sandboxed Lua 5.4
state and runs ``smtp_hook(ctx)`` per message, giving a ``Decision``;
``apply_modifications`` turns an accepted Decision's scheduled header edits and repacks into
the bytes to deliver. The API hooks see is described in API.md beside this file.
"""
from .context import Envelope
from .mime import parse as parse_mime
from .modify import RepackPassword, apply_modifications
from .result import ACTIONS, Decision, HookError
from .runtime import HookRuntime

__all__ = ["ACTIONS", "Decision", "Envelope", "HookError", "HookRuntime", "RepackPassword",
           "apply_modifications", "parse_mime"]
