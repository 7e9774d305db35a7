"""Messages vxgate writes itself (bounces, administrator notices): relayed, never checked.

They are created already acknowledged; checking them again could loop, so the only step is
relaying them to the next hop until it takes them.
"""
from salmon.routing import nolocking, route, stateless

from salmon_app.storage import models


@route(r"(queue_id)@(kind)\.vxgate", queue_id="[A-Z0-9]+", kind="notice|report")
@stateless
@nolocking
def START(message, queue_id=None, kind=None):
    message.handled = True
    if message.state in (models.RELAYING, models.DEFERRED):
        message.gateway.relay(message)
    else:
        message.forward(models.RELAYING)
