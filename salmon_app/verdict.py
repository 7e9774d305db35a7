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
