"""The Python side of the ``drweb`` module that hooks see (logging, regular expressions, lists).

The names follow the original product's ``drweb`` helper module, so a policy written for it
keeps working. Regular expressions are RE2 (``google-re2``): matching takes time linear in
the text whatever the pattern, so a pattern such as ``(\\w+\\s?)*`` cannot stall a worker
(Python's ``re`` would backtrack for seconds while holding the GIL of the whole process).
RE2 has no backreferences or lookaround, and its ``\\w`` is ASCII (``\\pL`` is any letter).
``search`` finds the pattern anywhere, ``match`` needs the whole text to match, as the
original's list files (``.*@example\\.com``) assume. List files are the only files a hook can
read, and only from one directory (``SmtpHookLists``): regular files, size-capped.
"""
import functools
import logging
import os
import stat

import re2

log = logging.getLogger("vxgate.hook")

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE,
          "warning": logging.WARNING, "error": logging.ERROR}

IGNORE_CASE = 1   # the flag bit behind drweb.regex.ignore_case and {ignore_case=true}
REGEX_MEMORY = 8 * 2**20   # RE2's own bound on one compiled pattern (its default)


def write_log(queue_id, level, message):
    if level not in LEVELS:
        raise ValueError("unknown log level %r (expected one of %s)"
                         % (level, ", ".join(LEVELS)))
    log.log(LEVELS[level], "%s: %s", queue_id or "-", message)


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern, flags=0):
    options = re2.Options()
    options.log_errors = False   # RE2 would print every bad pattern on stderr
    options.case_sensitive = not flags & IGNORE_CASE
    options.max_mem = REGEX_MEMORY
    try:
        return re2.compile(_utf8(pattern), options)
    except re2.error as exc:
        why = exc.args[0] if exc.args else exc
        why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        raise ValueError("invalid regular expression %r: %s" % (pattern, why)) from None


def _utf8(text):
    # Matched as UTF-8 bytes: text a hook passes may be binary (decoded with surrogateescape
    # on its way here), which RE2's str interface refuses.
    return text.encode("utf-8", "surrogateescape")


def search(patterns, text, flags=0):
    """True if any of ``patterns`` occurs in ``text``."""
    data = _utf8(text)
    return any(compile_pattern(p, flags).search(data) for p in patterns)


def match(patterns, text, flags=0):
    """True if any of ``patterns`` matches the whole of ``text``."""
    data = _utf8(text)
    return any(compile_pattern(p, flags).fullmatch(data) for p in patterns)


def read_list(path, base_dir, max_bytes):
    """Lines of a list file in ``base_dir``: stripped, without blank lines and ``#`` comments.

    ``path`` is taken relative to ``base_dir`` and must stay inside it once symbolic links
    are resolved; it must be a regular file of at most ``max_bytes`` (a device or a FIFO
    would never end). ``base_dir`` None means the hook may read no file at all.
    """
    if not base_dir:
        raise ValueError("list files are not available (SmtpHookLists is empty)")
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([base, full]) != base:
        raise ValueError("%s: list files are read only from %s (SmtpHookLists)" % (path, base))
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError("cannot read list file %s: %s" % (path, exc.strerror)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("%s is not a regular file" % path)
        if info.st_size > max_bytes:
            raise ValueError("list file %s is larger than the hook's memory limit" % path)
        stream = open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with stream:
        data = stream.read(max_bytes + 1)   # the file may have grown since fstat
    if len(data) > max_bytes:
        raise ValueError("list file %s is larger than the hook's memory limit" % path)
    lines = (line.strip() for line in data.decode("utf-8", "replace").splitlines())
    return [line for line in lines if line and not line.startswith("#")]
