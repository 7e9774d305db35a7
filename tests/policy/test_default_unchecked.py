"""The default hook's policy for unchecked mail, cause by cause (the README's table)."""
import pytest
from support.policy_data import EXE, HOOKS, analysis, multipart

from salmon_app.policy import HookRuntime, parse_mime, apply_modifications
from salmon_app.verdict import CAUSES, OUTAGE, SENDER

MESSAGE = multipart([("report.pdf", b"%PDF fake"), ("Setup.exe", EXE)])


@pytest.fixture(scope="module")
def default():
    return HookRuntime(str(HOOKS / "default.lua"))


def unchecked(cause, verdict="unchecked", **extra):
    result = analysis(verdict, [("2", "report.pdf", "clean" if verdict == "unchecked" else verdict),
                                ("3", "Setup.exe", "unchecked")])
    result["files"][1]["reason"] = "%s: why" % cause
    result.update(extra)
    return result


@pytest.mark.parametrize("cause", [c for c, (kind, _) in CAUSES.items() if kind == SENDER])
def test_sender_controlled_causes_are_quarantined(default, envelope, cause):
    for verdict in ("unchecked", "suspicious", "dangerous"):     # never less than unchecked
        decision = default.run(envelope, MESSAGE, unchecked(cause, verdict))
        assert (decision.action, decision.error) == ("quarantine", False), (cause, verdict)
        assert cause in decision.message


@pytest.mark.parametrize("cause", [c for c, (kind, _) in CAUSES.items() if kind == OUTAGE])
def test_outages_defer_until_the_maximum_hold_then_fall_back(default, envelope, cause):
    decision = default.run(envelope, MESSAGE, unchecked(cause, held=60.0, hold_expired=False))
    assert decision.action == "tempfail" and cause in decision.message
    late = default.run(envelope, MESSAGE, unchecked(cause, held=1e6, hold_expired=True,
                                                    hold_fallback="quarantine"))
    assert late.action == "quarantine"
    late = default.run(envelope, MESSAGE, unchecked(cause, held=1e6, hold_expired=True, hold_fallback="accept"))
    assert late.action == "accept"
    out = apply_modifications(MESSAGE, late, queue_id="Q1")
    assert parse_mime(out).header("X-Vxgate-Verdict") == "unchecked"


def test_unchecked_without_a_known_cause_counts_as_an_outage(default, envelope):
    result = analysis("unchecked", [("3", "Setup.exe", "unchecked")])    # no reason at all
    assert default.run(envelope, MESSAGE, result).action == "tempfail"


def test_unsupported_is_delivered_marked(default, envelope):
    decision = default.run(envelope, MESSAGE, unchecked("unsupported"))
    assert decision.action == "accept"
    assert parse_mime(apply_modifications(MESSAGE, decision, queue_id="Q1")).header("X-Vxgate-Verdict") == "unchecked"
