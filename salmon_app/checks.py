"""The check stage's seam: analysis (vxCube) and the policy decision (the Lua hook).

``analyse()`` returns the analysis of a message, or None while analyses are pending (the
message then re-enters the check stage when they finish). ``decide()`` turns a message and
its analysis into a decision. Without vxCube and without a hook every message is accepted
unchanged.
"""
import dataclasses


@dataclasses.dataclass
class Decision:
    action: str = "accept"
    message: str = ""
    code: str = ""
    text: str = ""
    added_recipients: list = dataclasses.field(default_factory=list)
    deleted_recipients: list = dataclasses.field(default_factory=list)
    modifications: list = dataclasses.field(default_factory=list)
    reason: str = ""
    error: bool = False


class Checks:
    def __init__(self, gateway):
        from salmon_app.analysis import Analyser
        self.gateway = gateway
        self.analyser = Analyser(gateway)

    def analyse(self, message):
        return self.analyser.analyse(message)

    def decide(self, message, analysis):
        return Decision()

    def start(self):
        self.analyser.start()

    def shut_down(self):
        self.analyser.shut_down()
