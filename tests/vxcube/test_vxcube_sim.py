"""The emulator's strictness, formats, controls and command line, spoken to with plain
requests so that client mistakes it must catch can be made on purpose."""
import io
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import requests

from salmon_app.vxcube.sim import (DEFAULT_API_KEY, EICAR, VxcubeSim, parse_duration,
                                   parse_listen)
from support.mail import zip_bytes

# a hung socket must fail the test, not the whole run
pytestmark = pytest.mark.timeout(30)

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"


@pytest.fixture
def api(sim, api_key):
    """A requests session with the right key and the API base URL."""
    session = requests.Session()
    session.headers["Authorization"] = "api-key %s" % api_key
    base = sim.url + "/api-2.0/"
    yield session, base
    session.close()


def upload(api, name, content):
    session, base = api
    return session.post(base + "samples", files={"file": (name, content)}, timeout=5)


# --- strictness ----------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "api-key wrong", "Bearer {key}", "{key}",
                                    "api-key  {key}"])
def test_authorization_is_required_exactly(sim, api_key, header):
    headers = {} if header is None else {"Authorization": header.format(key=api_key)}
    reply = requests.get(sim.url + "/api-2.0/license", headers=headers, timeout=5)
    assert reply.status_code == 401 and "message" in reply.json()
    assert api_key not in reply.text


def test_upload_needs_the_multipart_field_file(api):
    session, base = api
    wrong_field = session.post(base + "samples", files={"upload": ("a.pdf", PDF)}, timeout=5)
    assert wrong_field.status_code == 400
    assert wrong_field.json() == {"file": ["This field is required."]}
    not_multipart = session.post(base + "samples", data=PDF, timeout=5,
                                 headers={"Content-Type": "application/pdf"})
    assert not_multipart.status_code == 415 and "message" in not_multipart.json()
    empty = upload(api, "empty.pdf", b"")
    assert empty.status_code == 400 and "file" in empty.json()


def test_analyses_need_a_json_body_with_a_known_sample(api):
    session, base = api
    sample = upload(api, "a.pdf", PDF).json()
    cases = [
        (dict(data="sample_id=1"), 400),
        (dict(json={}), 400),
        (dict(json={"sample_id": "one"}), 400),
        (dict(json={"sample_id": 999}), 404),
        (dict(json={"sample_id": sample["id"], "platforms": ["amiga500"]}), 400),
        (dict(json={"sample_id": sample["id"], "format_name": "nonsense"}), 400),
        (dict(json={"sample_id": sample["id"], "analysis_time": "60"}), 400),
        (dict(json={"sample_id": sample["id"]}), 201),
    ]
    for kwargs, status in cases:
        reply = session.post(base + "analyses", timeout=5, **kwargs)
        assert reply.status_code == status, (kwargs, reply.text)
        assert isinstance(reply.json(), dict)


def test_unknown_things_are_404_with_a_json_body(api):
    session, base = api
    for path in ("nothing", "samples/424242", "analyses/no-such-uuid", "tasks/77"):
        reply = session.get(base + path, timeout=5)
        assert reply.status_code == 404 and "message" in reply.json()
    assert session.delete(base + "license", timeout=5).status_code == 405


# --- samples, formats and analyses ---------------------------------------------------



@pytest.mark.parametrize("name, content, fmt", [
    ("a.exe", "pe", "exe"),
    ("invoice.pdf", "pe", "exe"),  # by content, not by name
    ("lib.dll", "dll", "dll"),
    ("a.pdf", PDF, "pdf"),
    ("a.zip", zip_bytes({"a.txt": "x"}), "zip"),
    ("a.bin", zip_bytes({"[Content_Types].xml": "<T/>", "word/document.xml": "<w/>"}), "docx"),
    ("run.js", b"WScript.Echo('hi');", "js"),
    ("notes.txt", b"plain words", ""),
    ("noname", b"\x00\x01\x02 binary noise", ""),
])
def test_format_by_content(api, make_pe, name, content, fmt):
    content = {"pe": make_pe(), "dll": make_pe(dll=True)}.get(content, content)
    sample = upload(api, name, content).json()
    assert sample["format_name"] == fmt
    assert bool(sample["platforms"]) == bool(fmt)
    assert {"id", "name", "size", "upload_date", "md5", "sha1", "sha256", "is_x64"} <= set(sample)


def test_lookup_by_json_body_on_get(api):
    session, base = api
    sample = upload(api, "a.pdf", PDF).json()
    found = session.get(base + "samples", json={"sha256": sample["sha256"], "count": 1,
                                                "offset": 0}, timeout=5).json()
    assert [s["id"] for s in found] == [sample["id"]]
    assert session.get(base + "samples", json={"sha256": "0" * 64}, timeout=5).json() == []
    assert session.get(base + "samples/%d" % sample["id"], timeout=5).json() == sample


def test_email_upload_by_content_is_split(api, make_mail, make_pe):
    raw = make_mail([("a.pdf", PDF, "application/pdf"),
                     ("b.exe", make_pe(), "application/octet-stream")])
    reply = upload(api, "no-extension", raw).json()
    assert [s["name"] for s in reply["samples"]] == ["a.pdf", "b.exe"]


def test_task_progress_and_task_endpoint(api, sim):
    session, base = api
    sim.configure(analysis_time=0.5)
    sample = upload(api, "a.pdf", PDF + EICAR).json()
    analysis = session.post(base + "analyses", json={"sample_id": sample["id"]},
                            timeout=5).json()
    task_id = analysis["tasks"][0]["id"]
    assert analysis["tasks"][0]["status"] == "in queue"
    time.sleep(0.2)
    task = session.get(base + "tasks/%d" % task_id, timeout=5).json()
    assert task["status"] == "processing" and 0 < task["progress"] < 100 and task["message"]
    time.sleep(0.4)
    task = session.get(base + "tasks/%d" % task_id, timeout=5).json()
    assert (task["status"], task["verdict"]) == ("successful", "malware2")
    assert task["end_date"]


def test_licence_quota_counts_new_content_only(api, sim):
    sim.configure(uploads_total=1)
    assert upload(api, "a.pdf", PDF).status_code == 201
    assert upload(api, "again.pdf", PDF).status_code == 201
    over = upload(api, "b.pdf", PDF + b"other")
    assert over.status_code == 403 and "message" in over.json()
    licence = api[0].get(api[1] + "license", timeout=5).json()
    assert (licence["uploads_spent"], licence["uploads_total"]) == (1, 1)


# --- controls ------------------------------------------------------------------------

def test_controls_over_http_need_no_key(sim, api):
    control = sim.url + "/_sim/"
    assert requests.post(control + "config", json={"analysis_time": 0.25},
                         timeout=5).json()["analysis_time"] == 0.25
    assert requests.post(control + "config", json={"bogus": 1}, timeout=5).status_code == 400
    faults = requests.post(control + "faults", timeout=5,
                           json=[{"status": 502, "count": 1}, {"status": 429, "retry_after": 2}])
    assert faults.status_code == 200
    session, base = api
    assert session.get(base + "license", timeout=5).status_code == 502
    limited = session.get(base + "license", timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
    assert session.get(base + "license", timeout=5).status_code == 200
    stats = requests.get(control + "stats", timeout=5).json()
    assert stats["requests"] == 3 and stats["faults"] == []
    assert requests.post(control + "faults", json={"count": 2}, timeout=5).status_code == 400
    requests.post(control + "faults", json={"status": 500, "count": 5}, timeout=5)
    assert requests.delete(control + "faults", timeout=5).json() == {"faults": []}
    assert requests.post(control + "reset", timeout=5).status_code == 200
    assert requests.get(control + "stats", timeout=5).json()["requests"] == 0


def test_fault_scoped_by_path(sim, api):
    session, base = api
    sim.set_fault(500, count=1, path="/api-2.0/samples")
    assert session.get(base + "license", timeout=5).status_code == 200
    assert upload(api, "a.pdf", PDF).status_code == 500
    assert upload(api, "a.pdf", PDF).status_code == 201


def test_body_fault_answers_200_with_that_text(sim, api):
    session, base = api
    sim.set_fault(body='{"tasks": "garbage"}', path="analyses")
    sim.set_fault(body="{not json", path="license")
    reply = session.get(base + "analyses/x", timeout=5)
    assert (reply.status_code, reply.text) == (200, '{"tasks": "garbage"}')
    assert session.get(base + "license", timeout=5).text == "{not json"
    assert session.get(base + "license", timeout=5).json()["uploads_total"] == 100000


def test_drop_closes_without_a_reply(sim, api):
    sim.set_fault(drop=True)
    with pytest.raises(requests.ConnectionError):
        api[0].get(api[1] + "license", timeout=5)


def test_delay_fault(sim, api):
    sim.set_fault(delay=0.3)
    started = time.monotonic()
    assert api[0].get(api[1] + "license", timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_bad_fault_specs_are_refused(sim):
    for spec in ({}, {"status": 200}, {"status": 500, "count": 0}, {"drop": True, "when": 1}):
        with pytest.raises(ValueError):
            sim.backend.add_fault(spec)


# --- command line --------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("2s", 2.0), ("500ms", 0.5), ("1.5", 1.5),
                                           ("1m", 60.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_listen():
    assert parse_listen("127.0.0.1:8088") == ("127.0.0.1", 8088)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("9000") == ("127.0.0.1", 9000)
    with pytest.raises(ValueError):
        parse_listen("localhost")


def test_context_manager_and_default_key():
    with VxcubeSim(analysis_time=0) as sim:
        reply = requests.get(sim.url + "/api-2.0/platforms", timeout=5,
                             headers={"Authorization": "api-key " + DEFAULT_API_KEY})
        assert reply.status_code == 200


def test_command_line_runs_until_sigterm(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    process = subprocess.Popen(
        [sys.executable, "-m", "salmon_app.vxcube.sim", "--listen", "127.0.0.1:0",
         "--key", "cli-key", "--analysis-time", "100ms", "--uploads-total", "7"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        reply = requests.get(url + "/api-2.0/license", timeout=5,
                             headers={"Authorization": "api-key cli-key"})
        assert reply.status_code == 200 and reply.json()["uploads_total"] == 7
        assert requests.get(url + "/_sim/config", timeout=5).json()["analysis_time"] == 0.1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
