"""Files inside other things that mail programs show as attachments, and archives nobody can
look into. ``uuencoded_files`` reads uuencoded blocks out of a text body, ``tnef_files`` the
attachments of an Outlook ``winmail.dat`` (with ``tnefparse``), and ``encryption`` tells a
password-protected zip, 7z, rar or Office document (stdlib zipfile, ``py7zr``, ``rarfile``).
All of them take attacker bytes: they run in time linear in the input, and a blob that
cannot be read raises ``Unreadable`` with the cause (``salmon_app.verdict.CAUSES``) the
file is then unchecked with, never an exception of a library.
"""
import binascii
import io
import re
import struct
import zipfile

import py7zr
import rarfile
import tnefparse


class Unreadable(Exception):
    """A container vxgate cannot read; ``cause`` is the unchecked cause it leads to."""

    def __init__(self, cause, text):
        super().__init__(text)
        self.cause = cause


# --- uuencoded blocks in text ---------------------------------------------------------------

# Outlook, Thunderbird and others show a uuencoded block in a text body as an attachment.
# The stdlib's uu module is gone (Python 3.13) and no maintained library reads uuencoded
# blocks out of running text, so this is a small line-by-line parser: linear, and no regex
# on more than one line at a time.
_UU_BEGIN = re.compile(rb"begin(-base64)? +[0-7]{3,4} +(\S[^\r\n]*)")


def uuencoded_files(text):
    """[(name, bytes)] of the uuencoded (or ``begin-base64``) blocks in ``text``."""
    found = []
    lines = iter(text.splitlines())
    for line in lines:
        match = _UU_BEGIN.fullmatch(line.strip()) if line.startswith(b"begin") else None
        if match:
            content, complete = _uu_body(lines, bool(match.group(1)))
            if content or complete:
                found.append((match.group(2).decode("utf-8", "replace").strip(), content))
    return found


def _uu_body(lines, base64_form):
    """(bytes, whether an end line was met) of the lines after a begin line."""
    chunks = []
    for line in lines:
        line = line.rstrip()
        if line == (b"====" if base64_form else b"end"):
            return b"".join(chunks), True
        try:
            if base64_form:
                chunks.append(binascii.a2b_base64(line))
            elif line:
                try:
                    chunks.append(binascii.a2b_uu(line))
                except binascii.Error:   # encoders that pad the last line wrongly (as the uu module did)
                    chunks.append(binascii.a2b_uu(line[:(((line[0] - 32) & 63) * 4 + 5) // 3]))
        except binascii.Error:
            break
    return b"".join(chunks), False


# --- winmail.dat ------------------------------------------------------------------------------

TNEF_MAGIC = struct.pack("<I", tnefparse.TNEF.TNEF_SIGNATURE)
# tnefparse copies the rest of the blob for every object it reads (quadratic): a blob made of
# many tiny objects would stall a worker. Objects times size is checked first (linear).
_TNEF_COPY_BUDGET = 1 << 31
_TNEF_DEPTH = 4


def is_tnef(content, mime_type, name):
    return mime_type == "application/ms-tnef" or name.lower() == "winmail.dat" or content[:4] == TNEF_MAGIC


def tnef_files(content, depth=0):
    """[(name, bytes)] of the attachments in a TNEF blob, those of attached messages too."""
    objects, offset = 0, 6
    while offset + 12 < len(content):
        objects += 1
        offset += struct.unpack_from("<I", content, offset + 5)[0] + 11
    # No object, or one that runs past the end: a truncated or forged blob, not Outlook's.
    if content[:4] != TNEF_MAGIC or not objects or offset > len(content) \
            or objects * len(content) > _TNEF_COPY_BUDGET:
        raise Unreadable("unparseable", "TNEF that vxgate cannot read")
    try:
        tnef = tnefparse.TNEF(content, do_checksum=False)
        attachments = [(_tnef_name(a), bytes(a.data or b""), getattr(a, "embed", None))
                       for a in tnef.attachments]
    except Exception as exc:  # noqa: BLE001 - a hostile blob can break the library anywhere
        raise Unreadable("unparseable", "TNEF that vxgate cannot read (%s)" % type(exc).__name__) from None
    found = []
    for name, data, embedded in attachments:
        if embedded is None:
            found.append((name, data))
        elif depth < _TNEF_DEPTH:
            found.extend(tnef_files(data, depth + 1))
        else:
            raise Unreadable("too-deep", "TNEF nested more than %d levels deep" % _TNEF_DEPTH)
    return found


def _tnef_name(attachment):
    try:
        name = attachment.long_filename() or attachment._name
        # names come as bytes in the sender's code page
        return name.decode("utf-8", "replace").strip("\0") if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - a name in no known encoding: the content still counts
        return ""


# --- archives nobody can look into ------------------------------------------------------------

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OFFICE_ENCRYPTED = "EncryptedPackage".encode("utf-16-le")


def encryption(content, detected):
    """Why ``content`` is a password-protected archive or document (a sentence), or ""."""
    try:
        if detected in ("zip", "jar", "apk"):
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                locked = any(info.flag_bits & 1 for info in archive.infolist())
        elif detected == "rar":
            locked = rarfile.RarFile(io.BytesIO(content)).needs_password()
        elif detected == "7z":
            with py7zr.SevenZipFile(io.BytesIO(content)) as archive:
                locked = archive.needs_password()
        else:   # Office documents saved with a password are an OLE file holding EncryptedPackage
            locked = content[:8] == _OLE_MAGIC and _OFFICE_ENCRYPTED in content
    except py7zr.exceptions.PasswordRequired:
        locked = True
    except Exception:  # noqa: BLE001 - a broken archive is vxCube's to judge, not an encrypted one
        locked = False
    return "password-protected %s" % (detected or "file") if locked else ""
