"""BCC mode: the life of a blind copy that arrived on BccSocket.

stored -> analysing (vxCube) -> reported (a report went to the administrator) or closed.
A copy is never relayed; a copy of one of vxgate's own reports is closed unanalysed.
"""
from salmon.routing import nolocking, route, stateless

from salmon_app import bcc
from salmon_app.storage import models


@route(r"(queue_id)@bcc\.vxgate", queue_id="[A-Z0-9]+")
@stateless
@nolocking
def START(message, queue_id=None):
    message.handled = True
    gateway = message.gateway
    if message.state == models.STORED and bcc.is_report(gateway.headers_of(message.queue_id)):
        gateway.conclude(message.queue_id, models.CLOSED, None, "a copy of vxgate's own report: not analysed")
        return
    analysis = gateway.checks.analyse(message)
    if analysis is not None:
        bcc.finish(gateway, message, analysis)
