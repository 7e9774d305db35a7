"""The console with 10,000 messages: every list view, search and page stays fast.

Records are seeded with the models (test_quarantine.seed, the records the CLI's tests use),
over a database a real gateway runs on; the pages are fetched through Flask's test client
and timed. The list uses LIMIT/OFFSET on the indexed sort column and counts with the same
filters, so no page reads the table row by row into Python.
"""
import time

import pytest

from salmon_app.storage.models import Message
from support.web import dom
from test_quarantine import seed

N = 10000
LIMIT = 1.5      # seconds for one page on a busy 2-core machine (typically 20-100 ms)


@pytest.mark.slow
def test_ten_thousand_messages_stay_fast(console, capsys):
    rows = seed(console.gw.gateway.spool, N, files_every=N)
    assert Message.select().count() >= N
    client = console.client()
    target = rows[N // 2]
    views = {
        "list, newest first": "/",
        "quarantined, not released": "/?state=quarantined&released=no",
        "page 150 of 200": "/?page=150",
        "last page, by size": "/?sort=size&reverse=1&per=200&page=50",
        "by sender": "/?sender=s3@spam.test",
        "by recipient": "/?recipient=victim4@",
        "by subject, 3 days": "/?subject=invoice&since=3d",
        "by Message-ID (no match: a full scan)": "/?message_id=" + target["id"][:4],
        "by queue id": "/?queue_id=" + target["id"][:10],
        "date range": "/?since=2026-01-01&until=now&state=final",
        "a message": "/message/%s" % rows[0]["id"],
    }
    timings = {}
    for name, url in views.items():
        client.get(url)                              # warm: the first query compiles
        started = time.perf_counter()
        response = client.get(url)
        timings[name] = time.perf_counter() - started
        assert response.status_code == 200, (name, response.status_code)
    page = dom(client.get("/?page=150"))
    assert len(page.find("input", name="id")) == 50 and "page 150 of" in page.text
    assert target["id"] in dom(client.get(views["by queue id"])).text
    with capsys.disabled():
        print("\nweb console, %d messages:" % N)
        for name, seconds in timings.items():
            print("  %-40s %6.1f ms" % (name, seconds * 1000))
    slow = {name: s for name, s in timings.items() if s > LIMIT}
    assert not slow, slow
