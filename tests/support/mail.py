"""Shared test data: the corpus location, EICAR, vxCube test settings, messages with files."""
import io
import os
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus")

VXCUBE_KEY = "5e1f0c2a-7b7d-4c1e-9a55-0f4f3c2b1a99"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def vxcube_params(sim, **extra):
    params = dict(UseVxcube=True, VxcubeApiAddress=sim.url, VxcubeApiKey=VXCUBE_KEY,
                  VxcubePollInterval=0.1, VxcubeRetryMin=0.05, VxcubeRetryMax=0.5,
                  VxcubeRequestTimeout=3.0, VxcubeAnalysisTime=1.0)
    params.update(extra)
    return params


def mail_with(attachments, subject="files", sender="alice@x.test"):
    """A MIME message with the given (filename, bytes) attachments, CRLF line endings."""
    from email.message import EmailMessage
    from email import policy
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "bob@x.test", subject
    msg["Message-ID"] = "<%s@x.test>" % abs(hash((subject, tuple(a[0] for a in attachments))))
    msg.set_content("Please see the attached files.\n")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=policy.SMTP)


def pe_image(extra=b""):
    """A minimal PE executable (MZ header + PE signature) that type detection recognises."""
    import struct
    image = bytearray(0x100)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, 0x80)
    image[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HH", image, 0x84, 0x14C, 1)
    struct.pack_into("<H", image, 0x96, 0x0102)
    return bytes(image) + extra


def zip_bytes(members):
    """A zip archive of {name: bytes}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
