"""Export: the original .eml bytes of a message, exactly as received, to stdout or a file.

The stored file is copied in blocks (a 30 MB message is never held in memory). A file named
with ``-o`` is written to a temporary name beside it with mode 0600 and renamed into place,
so a failed export never leaves half a message under the requested name.
"""
import os
import shutil
import sys
import tempfile

from salmon_app.quarantine.store import QuarantineError


def export(store, queue_id, output=None):
    """Copy the message's bytes to ``output`` (a path; None or "-" for stdout); returns the size."""
    row = store.lookup(queue_id)
    problem = store.file_problem(row, "export")
    if problem:
        raise QuarantineError(problem)
    source = store.open_message(row)
    with source:
        if output in (None, "-"):
            out = sys.stdout.buffer
            sys.stdout.flush()
            shutil.copyfileobj(source, out, 1024 * 1024)
            out.flush()
            return source.tell()
        folder = os.path.dirname(os.path.abspath(output))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".vxgate-export-", dir=folder)
        except OSError as exc:
            raise QuarantineError("cannot write %s: %s" % (output, exc.strerror or exc)) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                shutil.copyfileobj(source, handle, 1024 * 1024)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, output)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise QuarantineError("cannot write %s: %s" % (output, exc.strerror or exc)) from None
        return source.tell()
