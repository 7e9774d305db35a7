"""Messages and analyses for the policy engine's tests (tests/policy)."""
import base64
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOOKS = ROOT / "config" / "hooks"

EXE = b"MZ\x90\x00" + bytes(range(256)) * 4   # a file that is not text, to check decoding


def multipart(attachments=(), *, subject="Quarterly report", eol=b"\r\n", extra_headers=()):
    """A multipart/mixed message: a text part, then one part per (name, bytes) attachment."""
    lines = [b"Received: from mx.example.org by gw.example.com; Mon, 1 Jan 2024 10:00:00 +0000",
             b"From: Alice <alice@example.org>", b"To: bob@example.com",
             b"Subject: " + subject.encode(), b"Date: Mon, 1 Jan 2024 10:00:00 +0000",
             b"Message-ID: <m1@example.org>", *extra_headers, b"MIME-Version: 1.0",
             b'Content-Type: multipart/mixed; boundary="b1"', b"",
             b"This is a multi-part message.", b"--b1",
             b"Content-Type: text/plain; charset=utf-8", b"", b"Hello Bob,", b"see attached.",
             b"--b1"]
    for name, data in attachments:
        lines += [b"Content-Type: application/octet-stream; name=\"%s\"" % name.encode(),
                  b"Content-Disposition: attachment; filename=\"%s\"" % name.encode(),
                  b"Content-Transfer-Encoding: base64", b"",
                  *base64.encodebytes(data).rstrip().split(b"\n"), b"--b1"]
    lines[-1] += b"--"
    return eol.join(lines) + eol


PLAIN = (b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hi\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n\r\nJust text.\r\n")


def analysis(verdict, files=()):
    """An analysis dict; ``files`` are (path, name, verdict) triples."""
    return {"verdict": verdict, "files": [
        {"name": name, "type": "exe", "size": 1, "sha256": "0" * 64, "verdict": v,
         "maliciousness": 90 if v == "dangerous" else 0, "analysis_id": "a-%s" % path,
         "path": path, "tasks": [{"platform": "winxpx86", "status": "successful",
                                  "verdict": "malware1" if v == "dangerous" else "clean1",
                                  "maliciousness": 90,
                                  "rules": {"malicious": ["Trojan"], "suspicious": [],
                                            "neutral": []}}]}
        for path, name, v in files]}
