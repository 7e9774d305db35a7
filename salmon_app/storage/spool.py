"""Message files on disk: written to a temporary name, fsynced, renamed (Mailman's queue rule).

A file under ``tmp/`` was never acknowledged and is removed at start-up; a file in its final
place is complete. Files live in ``<SpoolDir>/<first two characters of the id>/<id>.eml`` with
mode 0600 in directories of mode 0700.
"""
import hashlib
import os
import re

from salmon_app.storage.groupsync import FolderSyncs



class Spool:
    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        self.tmp = os.path.join(self.directory, "tmp")
        self.folders = FolderSyncs()
        for path in (self.directory, self.tmp):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)

    def path(self, queue_id):
        return "%s/%s.eml" % (self.folder(queue_id), queue_id)

    def folder(self, queue_id):
        """The folder of a message's file. Paths are joined as strings: ``os.path.join`` cost
        more than the rest of finding a file, three times per message."""
        if not (8 <= len(queue_id) <= 32 and queue_id.isalnum() and queue_id.isascii()):
            raise ValueError("not a queue id: %r" % queue_id)
        return "%s/%s" % (self.directory.rstrip("/"), queue_id[:2])

    def writer(self, queue_id):
        return SpoolWriter(self, queue_id)

    def read(self, queue_id):
        return read_file(self.path(queue_id))

    def exists(self, queue_id):
        return os.path.exists(self.path(queue_id))

    def remove(self, queue_id, variant=True):
        """Remove the message file and any modified copy (``variant=False``: there is none, known
        without a system call); True if the message file existed."""
        if variant:
            self.remove_variant(queue_id, "out")
        try:
            os.unlink(self.path(queue_id))
            return True
        except FileNotFoundError:
            return False

    def variant_path(self, queue_id, kind):
        return self.path(queue_id)[:-4] + "." + kind

    def store_variant(self, queue_id, kind, data):
        """A durable derived copy (``out``: the modified message to relay) beside the original."""
        self._write_durably(self.variant_path(queue_id, kind), data)

    def remove_variant(self, queue_id, kind):
        try:
            os.unlink(self.variant_path(queue_id, kind))
        except FileNotFoundError:
            pass

    def store(self, queue_id, data):
        """Write a whole message durably (notices, reports, modified copies)."""
        writer = self.writer(queue_id)
        try:
            writer.write(data)
            writer.commit()
        finally:
            writer.abort()
        return writer

    # Files waiting for their upload to vxCube, by SHA-256 (so a restart need not re-extract).
    def _sample_path(self, sha256):
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("not a sha256: %r" % sha256)
        return os.path.join(self.directory, "samples", sha256)

    def store_sample(self, sha256, data):
        path = self._sample_path(sha256)
        if os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._write_durably(path, data)

    def _write_durably(self, path, data):
        """Write ``data`` to a unique name in tmp/, fsync, rename to ``path`` (0600)."""
        tmp = os.path.join(self.tmp, "%s-%s" % (os.path.basename(path), os.urandom(4).hex()))
        with open(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)

    def read_sample(self, sha256):
        try:
            with open(self._sample_path(sha256), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def remove_sample(self, sha256):
        try:
            os.unlink(self._sample_path(sha256))
        except FileNotFoundError:
            pass

    def clean_tmp(self):
        """Remove files never acknowledged (a crash during DATA); returns how many."""
        removed = 0
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
            removed += 1
        return removed

    def queue_ids(self):
        for sub in os.listdir(self.directory):
            folder = os.path.join(self.directory, sub)
            if len(sub) != 2 or not os.path.isdir(folder):     # not tmp, samples, proc-N
                continue
            for name in os.listdir(folder):
                if name.endswith(".eml"):
                    yield name[:-4]


def read_file(path):
    """A whole file's bytes in four system calls (open() adds an isatty and a seek, and reads
    once more to find the end). Spool files do not change once renamed into place."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size) if size else b""
        if len(data) == size and size:
            return data
        parts = [data]
        while True:     # shorter than its size said (over 2 GB at once), or empty
            part = os.read(fd, 1 << 20)
            if not part:
                return b"".join(parts)
            parts.append(part)
    finally:
        os.close(fd)


class SpoolWriter:
    """Streams DATA to ``tmp/<id>``, hashing as it goes; ``commit()`` makes it durable."""

    def __init__(self, spool, queue_id):
        self.spool, self.queue_id = spool, queue_id
        self.tmp_path = "%s/%s" % (spool.tmp, queue_id)
        self.handle = open(os.open(self.tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600),
                           "wb", buffering=256 * 1024)
        self.hash = hashlib.sha256()
        self.size = 0
        self.committed = False
        self.error = None

    def write(self, data):
        # A write that fails (disk full) is kept, not raised: the session must read DATA to its
        # end and then answer 451, instead of dropping the connection without a reply.
        if self.error is None:
            try:
                self.handle.write(data)
            except OSError as exc:
                self.error = exc
        self.hash.update(data)
        self.size += len(data)

    def commit(self):
        if self.error is not None:
            raise self.error
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        final = self.spool.path(self.queue_id)
        folder = final[:final.rindex("/")]
        try:
            os.rename(self.tmp_path, final)
        except FileNotFoundError:       # the folder's first message (or it was removed)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.rename(self.tmp_path, final)
        # the rename itself must survive a power cut: one folder fsync for every session that
        # renamed into this folder meanwhile (storage/groupsync.py)
        self.spool.folders.sync(folder)
        self.committed = True
        return final

    def abort(self):
        """Forget an unfinished file; harmless after commit()."""
        if self.committed:
            return
        if not self.handle.closed:
            try:
                self.handle.close()     # flushes: on a full disk that fails, and that is fine here
            except OSError:
                pass
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    @property
    def sha256(self):
        return self.hash.hexdigest()
