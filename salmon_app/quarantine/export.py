"""Export: the original .eml bytes of a message, exactly as received, to stdout or a file.

The stored file is copied in blocks (a 30 MB message is never held in memory). A file named
with ``-o`` is written to a temporary name beside it with mode 0600 and renamed into place,
so a failed export never leaves half a message under the requested name.
"""
import shutil
import sys

from salmon_app import private_file
from salmon_app.quarantine.store import QuarantineError


def open_original(store, queue_id):
    """(record, open binary file) of the message's stored original, or QuarantineError."""
    row = store.lookup(queue_id)
    problem = store.file_problem(row, "export")
    if problem:
        raise QuarantineError(problem)
    return row, store.open_message(row)


def export(store, queue_id, output=None):
    """Copy the message's bytes to ``output`` (a path; None or "-" for stdout); returns the size."""
    row, source = open_original(store, queue_id)
    with source:
        if output in (None, "-"):
            out = sys.stdout.buffer
            sys.stdout.flush()
            shutil.copyfileobj(source, out, 1024 * 1024)
            out.flush()
            return source.tell()
        try:
            private_file.replace(output, lambda handle: shutil.copyfileobj(source, handle, 1024 * 1024),
                                 prefix=".vxgate-export-")
        except OSError as exc:
            raise QuarantineError("cannot write %s: %s" % (output, exc.strerror or exc)) from None
        return source.tell()
