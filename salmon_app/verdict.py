"""The one ordered verdict type used for files, messages, the hook and the quarantine.

Order is severity: a message's verdict is the worst of its files' verdicts. ``UNCHECKED``
(analysis failed or timed out) ranks above clean, so one unanalysable file never makes a
message look clean, and below suspicious, so a failure is never reported as a threat.
"""
import enum


class Verdict(enum.IntEnum):
    NONE = 0         # nothing was analysed (no files of the configured types)
    CLEAN = 1
    UNCHECKED = 2    # failed, deleted, timed out or unreachable: not a verdict
    SUSPICIOUS = 3
    DANGEROUS = 4

    @property
    def label(self):
        return self.name.lower()

    @classmethod
    def parse(cls, text):
        try:
            return cls[str(text).strip().upper()]
        except KeyError:
            raise ValueError("unknown verdict %r (expected one of %s)"
                             % (text, ", ".join(v.label for v in cls))) from None

    @classmethod
    def worst(cls, verdicts, default=None):
        verdicts = list(verdicts)
        if not verdicts:
            return cls.NONE if default is None else default
        return max(verdicts)


# vxCube task verdicts (API v2.0) -> our verdict. Anything else ("none", missing) is unchecked.
TASK_VERDICTS = {
    "clean1": Verdict.CLEAN, "clean2": Verdict.CLEAN,
    "suspicious1": Verdict.SUSPICIOUS, "suspicious2": Verdict.SUSPICIOUS,
    "malware1": Verdict.DANGEROUS, "malware2": Verdict.DANGEROUS,
}


def task_verdict(task):
    """Verdict of one vxCube task dict; only a successful task carries a verdict."""
    if task.get("status") != "successful":
        return Verdict.UNCHECKED
    return TASK_VERDICTS.get(task.get("verdict") or "none", Verdict.UNCHECKED)


# Why a file or a message is unchecked: a short stable token for hooks, records and logs.
# SENDER causes are under the sender's control (the default hook fails closed on them),
# OUTAGE causes are vxCube's or vxgate's limits (the default hook defers, for a while),
# UNSUPPORTED means vxCube cannot run the file at all. A message's cause is the first of its
# files' causes in this order, so one hiding trick is never masked by an outage.
SENDER, OUTAGE, UNSUPPORTED_KIND = "sender", "outage", "unsupported"
CAUSES = {
    "encrypted": (SENDER, "a password-protected archive that nobody can look into"),
    "too-deep": (SENDER, "MIME parts nested deeper than vxgate reads"),
    "too-many-files": (SENDER, "more files than VxcubeMaxFiles in one message"),
    "unparseable": (SENDER, "a structure vxgate cannot read unambiguously"),
    "quota": (OUTAGE, "the vxCube licence has no uploads left"),
    "budget": (OUTAGE, "the sender or client used up its VxcubeUploadBudget"),
    "vxcube-error": (OUTAGE, "vxCube failed, was unreachable or answered nonsense"),
    "timeout": (OUTAGE, "the analysis did not finish within VxcubeTimeout"),
    "unsupported": (UNSUPPORTED_KIND, "a file vxCube cannot analyse (format, empty)"),
}
_CAUSE_ORDER = list(CAUSES)


def cause_kind(cause):
    """SENDER, OUTAGE or UNSUPPORTED_KIND for a cause token ("" for none or an unknown one)."""
    return CAUSES.get(cause, ("",))[0]


def worst_cause(causes):
    """The message's cause from its files' causes ("" when there is none)."""
    known = [c for c in causes if c in CAUSES]
    return min(known, key=_CAUSE_ORDER.index) if known else ""


def with_cause(cause, text):
    """A stored reason that starts with its cause token: "quota: vxCube upload limit reached"."""
    assert cause in CAUSES, cause
    return "%s: %s" % (cause, text)


def cause_of(reason, verdict=None):
    """The cause token a stored reason starts with. An unchecked file whose reason predates
    causes (or is empty) counts as a vxCube error: the safe reading for an outage."""
    token = (reason or "").split(":", 1)[0].strip()
    if token in CAUSES:
        return token
    return "vxcube-error" if verdict == Verdict.UNCHECKED.label else ""


def never_analysed(reason):
    """Whether a stored reason says vxgate could not have the file analysed at all (it did
    not, or vxCube could not, look at the content), as opposed to an analysis that failed."""
    reason = reason or ""
    return reason.startswith("not analysable") or cause_of(reason) in (
        "encrypted", "too-deep", "too-many-files", "unparseable", "quota", "budget", "unsupported")
