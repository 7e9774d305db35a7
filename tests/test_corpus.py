"""The 170 real-world messages in shared/corpus: each relayed byte-identical or refused clearly."""
import glob
import os
import smtplib

import pytest

from support.mail import CORPUS

FILES = sorted(p for p in glob.glob(os.path.join(CORPUS, "**", "*"), recursive=True)
               if os.path.isfile(p) and os.path.basename(p) not in
               ("MANIFEST.sha256", "SOURCES.md", "LICENSE.txt", "MIT-LICENSE"))


def wire_bytes(raw):
    """What an SMTP client puts on the wire: CRLF line endings, ending with CRLF."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


@pytest.mark.skipif(not FILES, reason="shared/corpus not present")
def test_corpus_relayed_identically_or_refused(vxgate, sink):
    assert len(FILES) == 170
    gw = vxgate()
    relayed, refused = 0, []
    with gw.client() as client:
        for path in FILES:
            data = wire_bytes(open(path, "rb").read())
            opts = ["SMTPUTF8", "BODY=8BITMIME"] if any(b > 127 for b in data) else []
            try:
                client.sendmail("corpus@x.test", ["rcpt@x.test"], data, mail_options=opts)
                relayed += 1
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code in (550, 552) and exc.smtp_error, path
                refused.append((os.path.relpath(path, CORPUS), exc.smtp_code, exc.smtp_error.decode()))
                client.rset()
    got = sink.wait_for(relayed, 30)
    sent = [wire_bytes(open(p, "rb").read()) for p in FILES
            if os.path.relpath(p, CORPUS) not in {r[0] for r in refused}]
    assert [m.data for m in got] == sent
    assert len(refused) <= 2, refused     # mail_outlook_1 has an 11,677-character line
    # and the server is alive afterwards
    gw.send("a@x.test", ["b@x.test"], b"Subject: after\r\n\r\nok\r\n")
    sink.wait_for(relayed + 1, 10)
