"""The Python side of the ``drweb`` module that hooks see (logging, regular expressions, lists).

The names follow the original product's ``drweb`` helper module, so a policy written for it
keeps working. Regular expressions are Python's ``re`` (close to the PCRE the original uses):
``search`` finds the pattern anywhere, ``match`` needs the whole text to match, as the
original's list files (``.*@example\\.com``) assume. List files are the only files a hook can
read; they are read when the hook asks (normally once, when the hook is loaded).
"""
import functools
import logging
import os
import re

log = logging.getLogger("vxgate.hook")

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE,
          "warning": logging.WARNING, "error": logging.ERROR}

IGNORE_CASE = 1   # the flag bit behind drweb.regex.ignore_case and {ignore_case=true}


def write_log(queue_id, level, message):
    if level not in LEVELS:
        raise ValueError("unknown log level %r (expected one of %s)"
                         % (level, ", ".join(LEVELS)))
    log.log(LEVELS[level], "%s: %s", queue_id or "-", message)


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern, flags=0):
    try:
        return re.compile(pattern, re.IGNORECASE if flags & IGNORE_CASE else 0)
    except re.error as exc:
        raise ValueError("invalid regular expression %r: %s" % (pattern, exc)) from None


def search(patterns, text, flags=0):
    """True if any of ``patterns`` occurs in ``text``."""
    return any(compile_pattern(p, flags).search(text) for p in patterns)


def match(patterns, text, flags=0):
    """True if any of ``patterns`` matches the whole of ``text``."""
    return any(compile_pattern(p, flags).fullmatch(text) for p in patterns)


def read_list(path, base_dir, max_bytes):
    """Lines of a list file: stripped, without blank lines and ``#`` comments.

    A relative path is taken from ``base_dir`` (the hook file's folder), so a hook and its
    lists can move together.
    """
    path = os.path.join(base_dir, os.path.expanduser(path))
    if os.path.getsize(path) > max_bytes:
        raise ValueError("%s is larger than the hook's memory limit" % path)
    with open(path, encoding="utf-8", errors="replace") as stream:
        lines = (line.strip() for line in stream)
        return [line for line in lines if line and not line.startswith("#")]
