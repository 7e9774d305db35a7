"""Writing a private file in place of another: never half a file under its name, never readable by others.

``replace(path, fill)`` lets ``fill(handle)`` write a temporary file beside ``path`` (mode
0600, from mkstemp), flushes it to disk and renames it into place; on any failure the
temporary file is removed and the OSError goes to the caller, who words it. Exports of
messages and the console's users file use it.
"""
import os
import tempfile


def replace(path, fill, *, prefix=".vxgate-", text=False, owner_of_folder=False):
    """Write ``path`` through ``fill``; ``owner_of_folder`` gives the file to the folder's owner
    (root writing for a service user)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
            if owner_of_folder:
                owner = os.stat(folder)
                os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
