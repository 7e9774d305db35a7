"""The shipped hooks: the default policy per verdict, the examples, and the default's cost."""
import pytest
from support.policy_data import EXE, HOOKS, analysis, multipart

from salmon_app.policy import Envelope, HookRuntime, apply_modifications, parse_mime
from salmon_app.policy.bench import measure

DEFAULT = str(HOOKS / "default.lua")
MESSAGE = multipart([("report.pdf", b"%PDF fake"), ("Setup.exe", EXE)])


@pytest.fixture(scope="module")
def default():
    return HookRuntime(DEFAULT)


def deliver(runtime, envelope, raw, result):
    decision = runtime.run(envelope, raw, result)
    assert decision.action == "accept" and not decision.error, decision
    return apply_modifications(raw, decision, queue_id="Q1")


@pytest.mark.parametrize("verdict", ["clean", "none"])
def test_default_leaves_clean_mail_untouched(default, envelope, verdict):
    result = analysis(verdict, [("3", "Setup.exe", verdict)]) if verdict == "clean" else {}
    assert deliver(default, envelope, MESSAGE, result) is MESSAGE


def test_default_marks_unchecked(default, envelope):
    result = analysis("unchecked", [("3", "Setup.exe", "unchecked")])
    result["files"][0]["reason"] = "unsupported: empty file"    # other causes: test_default_unchecked.py
    out = deliver(default, envelope, MESSAGE, result)
    assert parse_mime(out).header("X-Vxgate-Verdict") == "unchecked"
    assert parse_mime(out).header("Subject") == "Quarterly report"


def test_default_tags_suspicious_once(default, envelope):
    result = analysis("suspicious", [("3", "Setup.exe", "suspicious")])
    forged = multipart([("Setup.exe", EXE)], extra_headers=[b"X-Vxgate-Verdict: clean"])
    out = deliver(default, envelope, forged, result)
    message = parse_mime(out)
    assert message.header("Subject") == "[SUSPICIOUS] Quarterly report"
    assert [f.value for f in message.fields if f.name == "X-Vxgate-Verdict"] == ["suspicious"]
    again = parse_mime(deliver(default, envelope, out, result))
    assert again.header("Subject") == "[SUSPICIOUS] Quarterly report"


def test_default_repacks_dangerous_files(default, envelope):
    result = analysis("dangerous", [("2", "report.pdf", "clean"), ("3", "Setup.exe", "dangerous")])
    out = deliver(default, envelope, MESSAGE, result)
    message = parse_mime(out)
    assert message.header("X-Vxgate-Verdict") == "dangerous"
    assert message.part_at("2").body_raw == parse_mime(MESSAGE).part_at("2").body_raw
    notice, archive = message.part_at("3").children
    assert archive.name == "Setup.exe.zip" and "vxCube found the file dangerous" in notice.text


def test_default_quarantines_the_whole_message_when_a_file_has_no_part(default, envelope):
    result = analysis("dangerous", [(None, "inner.exe", "dangerous")])
    message = parse_mime(deliver(default, envelope, MESSAGE, result))
    assert message.children[1].name == "quarantine.zip"


def test_example_allow_senders(envelope):
    runtime = HookRuntime(str(HOOKS / "examples" / "allow_senders.lua"))
    result = analysis("suspicious", [("3", "Setup.exe", "suspicious")])
    trusted = Envelope("Billing@Partner.example", ["bob@example.com"])
    assert parse_mime(deliver(runtime, trusted, MESSAGE, result)).header("Subject") \
        == "Quarterly report"
    assert parse_mime(deliver(runtime, envelope, MESSAGE, result)).header("Subject") \
        == "[SUSPICIOUS] Quarterly report"


def test_example_block_executables(envelope):
    runtime = HookRuntime(str(HOOKS / "examples" / "block_executables.lua"))
    decision = runtime.run(envelope, multipart([("INVOICE.EXE", EXE)]), {})
    assert (decision.action, decision.message) == (
        "reject", "5.7.1 Executable attachments are not accepted: INVOICE.EXE")
    assert runtime.run(envelope, MESSAGE.replace(b"Setup.exe", b"Setup.txt"), {}).action == "accept"


def test_example_per_recipient():
    runtime = HookRuntime(str(HOOKS / "examples" / "per_recipient.lua"))
    result = analysis("suspicious", [("3", "Setup.exe", "suspicious")])
    mixed = Envelope("a@example.org", ["bob@example.com", "CEO@example.com", "x@payroll.example.com"])
    decision = runtime.run(mixed, MESSAGE, result)
    assert decision.deleted_recipients == ["CEO@example.com", "x@payroll.example.com"]
    assert decision.added_recipients == ["security@example.com"]
    only_strict = Envelope("a@example.org", ["ceo@example.com"])
    assert runtime.run(only_strict, MESSAGE, result).action == "quarantine"
    assert runtime.run(mixed, MESSAGE, {}).deleted_recipients == []


def test_default_hook_cost():
    clean = measure(DEFAULT, MESSAGE, 300, analysis("clean", [("3", "Setup.exe", "clean")]))
    suspicious = measure(DEFAULT, MESSAGE, 300,
                         analysis("suspicious", [("3", "Setup.exe", "suspicious")]))
    print("\ndefault hook per message: clean p50 %.0f us p99 %.0f us; suspicious p50 %.0f us "
          "p99 %.0f us" % (clean["p50"] * 1e6, clean["p99"] * 1e6,
                           suspicious["p50"] * 1e6, suspicious["p99"] * 1e6))
    assert clean["p50"] < 0.005 and suspicious["p50"] < 0.01
    isolated = measure(DEFAULT, MESSAGE, 300, analysis("clean", [("3", "Setup.exe", "clean")]),
                       isolated=True)
    print("in the daemon's hook process: clean p50 %.0f us p99 %.0f us"
          % (isolated["p50"] * 1e6, isolated["p99"] * 1e6))
    assert isolated["p50"] < 0.01
