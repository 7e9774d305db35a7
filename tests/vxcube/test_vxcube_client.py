"""VxcubeClient against the emulator over real HTTP on 127.0.0.1: calls, the analysis
life-cycle, retries and their limits, and that the API key never leaks."""
import hashlib
import json
import logging
import socket
import threading
import time
import traceback

import pytest
import requests
import tenacity

from salmon_app.verdict import Verdict, task_verdict
from salmon_app.vxcube.client import RetryPolicy, VxcubeClient, VxcubeError, api_base_url
from salmon_app.vxcube.extract import FileItem, not_analysable_reason
from salmon_app.vxcube.sim import EICAR, FAIL_MARKER, SUSPICIOUS_MARKER

# a hung socket must fail the test, not the whole run
pytestmark = pytest.mark.timeout(30)

PDF = b"%PDF-1.4\n1 0 obj << >> endobj\n"


def file_verdict(analysis):
    return Verdict.worst(task_verdict(task) for task in analysis["tasks"])


def finished(analysis):
    return all(task["status"] not in ("in queue", "processing") for task in analysis["tasks"])


def wait_for(client, analysis_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        analysis = client.get_analysis(analysis_id)
        seen.extend((t["status"], t.get("progress")) for t in analysis["tasks"])
        if finished(analysis) or time.monotonic() > deadline:
            return analysis, seen
        time.sleep(0.05)


# --- address and policy ----------------------------------------------------------------

@pytest.mark.parametrize("address, expected", [
    ("vxcube.example.org", "https://vxcube.example.org/api-2.0/"),
    ("vxcube.example.org:8443", "https://vxcube.example.org:8443/api-2.0/"),
    ("https://vxcube.drweb.com/", "https://vxcube.drweb.com/api-2.0/"),
    ("http://10.0.0.5:8080", "http://10.0.0.5:8080/api-2.0/"),
    ("  https://host/api-2.0/ ", "https://host/api-2.0/"),
    ("https://host/sandbox", "https://host/sandbox/api-2.0/"),
])
def test_api_base_url_accepts_the_documented_forms(address, expected):
    assert api_base_url(address) == expected


@pytest.mark.parametrize("address", ["", "ftp://host", "https://"])
def test_api_base_url_rejects_nonsense(address):
    with pytest.raises(ValueError):
        api_base_url(address)


def test_retry_policy_from_config_and_validation():
    policy = RetryPolicy.from_config({"attempts": "5", "initial": "0.5", "maximum": 10,
                                      "max_elapsed": "60"})
    assert policy == RetryPolicy(attempts=5, initial=0.5, maximum=10.0, max_elapsed=60.0)
    assert isinstance(policy.retrying(), tenacity.Retrying)
    with pytest.raises(ValueError, match="unknown"):
        RetryPolicy.from_config({"atempts": 3})
    with pytest.raises(ValueError):
        RetryPolicy.from_config({"attempts": "many"})
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_client_requires_a_key(sim):
    with pytest.raises(ValueError):
        VxcubeClient(sim.url, "")


# --- calls ---------------------------------------------------------------------------

def test_information_calls(client):
    licence = client.license()
    assert {"uploads_total", "uploads_spent", "upload_max_size", "max_run_time"} <= set(licence)
    assert {"code", "name", "os_code"} <= set(client.platforms()[0])
    assert any(fmt["name"] == "exe" for fmt in client.formats())


def test_wrong_key_is_final_and_not_retried(sim):
    with VxcubeClient(sim.url, "wrong-key", retry=RetryPolicy(attempts=3, initial=0.01)) as vx:
        with pytest.raises(VxcubeError) as caught:
            vx.license()
    assert caught.value.status == 401 and not caught.value.transient
    assert sim.stats()["requests"] == 1


def test_upload_then_find_and_same_content_is_one_sample(client, sim, make_pe):
    content = make_pe(x64=True)
    sha256 = hashlib.sha256(content).hexdigest()
    assert client.find_sample(sha256) is None
    [sample] = client.upload("setup.exe", content)
    assert sample["sha256"] == sha256 and sample["format_name"] == "exe"
    assert sample["is_x64"] is True and sample["platforms"]
    assert client.find_sample(sha256.upper())["id"] == sample["id"]
    assert client.upload("copy.exe", content)[0]["id"] == sample["id"]
    stats = sim.stats()
    assert (stats["uploads"], stats["upload_requests"], stats["lookups"]) == (1, 2, 2)
    assert stats["by_sha256"] == {sha256: 2}
    assert client.license()["uploads_spent"] == 1


def test_upload_of_an_email_is_split_into_its_attachments(client, sim, make_mail, make_pe):
    raw = make_mail([("report.pdf", PDF, "application/pdf"),
                     ("tool.exe", make_pe(), "application/octet-stream")])
    samples = client.upload("message.eml", raw)
    assert sorted(s["name"] for s in samples) == ["report.pdf", "tool.exe"]
    assert sorted(s["format_name"] for s in samples) == ["exe", "pdf"]
    assert sim.stats()["uploads"] == 1


def test_analysis_life_cycle_by_polling(client, sim):
    sim.configure(analysis_time=0.6)
    [sample] = client.upload("doc.pdf", PDF)
    analysis = client.start_analysis(sample["id"], analysis_time=60)
    assert analysis["sample_id"] == sample["id"] and len(analysis["tasks"]) == 2
    assert {task["status"] for task in analysis["tasks"]} == {"in queue"}
    final, seen = wait_for(client, analysis["id"])
    processing = [progress for status, progress in seen if status == "processing"]
    assert processing and all(0 <= progress <= 100 for progress in processing)
    assert all(task["status"] == "successful" for task in final["tasks"])
    assert file_verdict(final) is Verdict.CLEAN
    assert sim.stats()["analyses"] == 1


@pytest.mark.parametrize("content, verdict", [
    (PDF, Verdict.CLEAN),
    (PDF + EICAR, Verdict.DANGEROUS),
    (PDF + SUSPICIOUS_MARKER, Verdict.SUSPICIOUS),
    (PDF + FAIL_MARKER, Verdict.UNCHECKED),
    (PDF + EICAR + FAIL_MARKER, Verdict.UNCHECKED),  # a failure is never a threat
])
def test_verdict_markers(client, content, verdict):
    [sample] = client.upload("file.pdf", content)
    analysis = client.start_analysis(sample["id"], platforms=["win10x64"])
    final, _ = wait_for(client, analysis["id"])
    assert [task["platform_code"] for task in final["tasks"]] == ["win10x64"]
    assert file_verdict(final) is verdict


def test_eicar_task_carries_the_documented_fields(client):
    [sample] = client.upload("eicar.com", EICAR)
    final, _ = wait_for(client, client.start_analysis(sample["id"])["id"])
    task = final["tasks"][0]
    assert task["verdict"] == "malware2" and task["maliciousness"] == 100
    assert task["rules"]["malicious"] and "yara" in task["detects"]


def test_unrecognised_format_is_not_analysable(client):
    content = b"just some words, nothing to run\n"
    [sample] = client.upload("notes.txt", content)
    assert sample["format_name"] == "" and sample["platforms"] == []
    item = FileItem(name="notes.txt", content=content, detected_type="txt",
                    mime_type="text/plain", path="2", selected=True)
    assert "does not recognise" in not_analysable_reason(item, sample)
    with pytest.raises(VxcubeError) as caught:
        client.start_analysis(sample["id"])
    assert caught.value.status == 400 and not caught.value.transient
    assert client.start_analysis(sample["id"], format_name="js")["format_name"] == "js"


def test_sessions_are_per_thread(client):
    sessions = []

    def work():
        client.license()
        sessions.append(client._session())

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(session) for session in sessions}) == 3


# --- retries -------------------------------------------------------------------------

def test_5xx_then_success_is_retried(client, sim):
    sim.set_fault(500, count=2)
    assert client.platforms()
    assert sim.stats()["requests"] == 3


def test_429_retry_after_is_honoured(client, sim):
    sim.set_fault(429, retry_after=1, count=1)
    started = time.monotonic()
    client.license()
    assert time.monotonic() - started >= 1.0
    assert sim.stats()["requests"] == 2


def test_retry_after_is_capped_by_maximum(sim, api_key):
    policy = RetryPolicy(attempts=2, initial=0.01, maximum=0.2, max_elapsed=10)
    sim.set_fault(429, retry_after=30)
    with VxcubeClient(sim.url, api_key, retry=policy) as vx:
        started = time.monotonic()
        vx.license()
    assert time.monotonic() - started < 5


def test_dropped_connection_is_retried(client, sim):
    client.license()  # a kept-alive connection exists: the drop hits a reused one
    sim.set_fault(drop=True, count=1)
    assert client.formats()
    assert sim.stats()["requests"] == 3


def test_read_timeout_is_retried(sim, api_key, quick_retry):
    sim.set_fault(delay=1.0, count=1)
    with VxcubeClient(sim.url, api_key, timeout=0.3, retry=quick_retry) as vx:
        assert vx.license()["uploads_total"]
    assert sim.stats()["requests"] == 2


def test_4xx_is_not_retried(client, sim):
    sim.set_fault(404, count=3)
    with pytest.raises(VxcubeError) as caught:
        client.license()
    assert caught.value.status == 404 and not caught.value.transient
    assert sim.stats()["requests"] == 1


def test_exhausted_retries_raise_a_transient_error(client, sim):
    sim.set_fault(503, count=10)
    with pytest.raises(VxcubeError) as caught:
        client.license()
    assert caught.value.transient and caught.value.status == 503
    assert sim.stats()["requests"] == 3


def test_retry_stops_at_max_elapsed(sim, api_key):
    policy = RetryPolicy(attempts=50, initial=0.2, maximum=0.2, max_elapsed=0.5)
    sim.set_fault(500, count=100)
    with VxcubeClient(sim.url, api_key, retry=policy) as vx:
        started = time.monotonic()
        with pytest.raises(VxcubeError):
            vx.license()
    assert time.monotonic() - started < 1.5
    assert sim.stats()["requests"] < 10


# --- the key never leaks -------------------------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_no_key(key, error, caplog, client):
    texts = [str(error), repr(error), caplog.text, repr(client),
             "".join(traceback.format_exception(error))]
    assert not [text for text in texts if key in text]


@pytest.mark.parametrize("scenario", ["wrong key", "server errors", "refused", "timeout"])
def test_key_never_in_errors_or_logs(sim, api_key, caplog, scenario):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    policy = RetryPolicy(attempts=2, initial=0.01, maximum=0.05, max_elapsed=5)
    key, address, timeout = api_key, sim.url, 2.0
    if scenario == "wrong key":
        key = "deadbeef-0000-4000-8000-secretsecret"
    elif scenario == "server errors":
        sim.set_fault(500, count=5)
    elif scenario == "refused":
        address = "http://127.0.0.1:%d" % free_port()
    else:
        sim.set_fault(delay=0.5, count=2)
        timeout = 0.1
    client = VxcubeClient(address, key, timeout=timeout, retry=policy)
    with pytest.raises(VxcubeError) as caught:
        client.upload("x.exe", b"MZ" + bytes(100))
    assert_no_key(key, caught.value, caplog, client)
    client.close()


def test_key_scrubbed_even_if_a_reply_echoes_it(sim):
    # The emulator never echoes the key; a real error page might. Build such a reply.
    key = "abc-123-secret"
    reply = requests.Response()
    reply.status_code, reply.reason = 401, "Unauthorized"
    reply._content = json.dumps({"message": "bad key %s" % key}).encode()
    client = VxcubeClient(sim.url, key)
    with pytest.raises(VxcubeError) as caught:
        client._decode("GET", "license", reply)
    assert key not in str(caught.value) and "<api-key>" in str(caught.value)


# --- replies of the wrong shape --------------------------------------------------------------

def _bad_json():
    import sys, os
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from support.hostile import VXCUBE_BAD_JSON
    return VXCUBE_BAD_JSON


@pytest.mark.parametrize("body", _bad_json())
def test_a_reply_of_the_wrong_shape_is_a_transient_error_and_retried(client, sim, body):
    for call, path in ((lambda: client.get_analysis("a1"), "analyses"),
                       (lambda: client.start_analysis(1), "analyses"),
                       (lambda: client.find_sample("0" * 64), "samples"),
                       (lambda: client.upload("a.pdf", PDF), "samples"),
                       (lambda: client.license(), "license")):
        if body in (b"[]",) and path == "samples":
            continue        # an empty list is a fine answer to a lookup
        sim.clear_faults()
        sim.set_fault(body=body, count=10, path=path)
        requests_before = sim.stats()["requests"]
        with pytest.raises(VxcubeError) as caught:
            call()
        assert caught.value.transient, (body, path)
        assert sim.stats()["requests"] - requests_before == 3      # every attempt of the policy


def test_a_wrong_shape_once_is_retried_to_the_right_answer(client, sim):
    sample = client.upload("a.pdf", PDF)[0]
    analysis = client.start_analysis(sample["id"])
    sim.set_fault(body=b'{"tasks": [{"status": null}]}', count=2, path="analyses/")
    assert client.get_analysis(analysis["id"])["id"] == analysis["id"]


# --- the environment: proxy, CA bundle, ~/.netrc -------------------------------------------

class Recorder:
    """A one-request-at-a-time HTTP server that keeps each request's head and answers a licence."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.heads = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        body = b'{"uploads_spent": 1, "uploads_total": 10}'
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.heads.append(head.decode("latin-1"))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self):
        self.listener.close()


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def test_the_environments_proxy_is_used_though_read_once_per_session(recorder, api_key, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:%d" % recorder.port)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with VxcubeClient("http://vxcube.invalid", api_key, timeout=2.0) as vx:
        assert vx.license()["uploads_total"] == 10
        monkeypatch.delenv("HTTP_PROXY")       # read when the session began, as by a daemon
        assert vx.license()["uploads_total"] == 10
    assert [head.split("\r\n")[0] for head in recorder.heads] == [
        "GET http://vxcube.invalid/api-2.0/license HTTP/1.1"] * 2


def test_no_proxy_in_the_environment_still_exempts_vxcube(recorder, sim, api_key, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:%d" % recorder.port)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with VxcubeClient(sim.url, api_key, timeout=2.0) as vx:
        assert vx.license()["uploads_total"] == 100000
    assert recorder.heads == []


def test_a_netrc_entry_for_the_host_does_not_replace_the_api_key(recorder, api_key, monkeypatch, tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    with VxcubeClient("http://127.0.0.1:%d" % recorder.port, api_key, timeout=2.0) as vx:
        vx.license()
    assert "Authorization: api-key %s\r\n" % api_key in recorder.heads[0]


@pytest.mark.parametrize("configured, expected", [(True, "/etc/bundle-from-env.pem"), (False, False),
                                                  ("/etc/vxcube-ca.pem", "/etc/vxcube-ca.pem")])
def test_the_environments_ca_bundle_applies_unless_one_is_configured(api_key, monkeypatch, configured, expected):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/bundle-from-env.pem")
    with VxcubeClient("https://vxcube.example", api_key, verify=configured) as vx:
        assert vx._session().verify == expected
