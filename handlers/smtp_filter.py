"""SMTP mode: the life of a message Postfix handed to vxgate's SmtpSocket.

stored -> checking (vxCube analyses, then the Lua hook decides) -> relaying -> delivered, or
quarantined / rejected / discarded / tempfailed / failed. Each call runs one step in the
pool of the stage that owns the message's state; the gateway moves it on.
"""
from salmon.routing import nolocking, route, stateless

from salmon_app.storage import models


@route(r"(queue_id)@smtp\.vxgate", queue_id="[A-Z0-9]+")
@stateless
@nolocking
def START(message, queue_id=None):
    message.handled = True
    STEPS[message.state](message)


def check(message):
    """Analyse (or pick up finished analyses), then let the policy decide."""
    checks = message.gateway.checks
    analysis = checks.analyse(message)
    if analysis is None:
        return   # analyses pending: the analyser re-submits the message when they finish
    decision = checks.decide(message, analysis)
    message.gateway.apply(message, decision, analysis)


def relay(message):
    message.gateway.relay(message)


STEPS = {models.STORED: check, models.CHECKING: check, models.ANALYSING: check,
         models.RELAYING: relay, models.DEFERRED: relay}
