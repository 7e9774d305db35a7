"""The object Salmon's Router delivers: a stored message, without parsing or re-encoding it.

Salmon's ``MailRequest`` parses and re-encodes the whole message on creation (slow for 30 MB,
fatal for malformed mail and for DKIM), so the Router gets this light stand-in instead. Its
``To`` is a routing address ``<queue id>@<mode>.vxgate``: the handler for the listener that
received the message matches it, whatever the real recipients are.
"""
import functools
import os

from salmon_app.log import qlog
from salmon_app.smtp_syntax import relayable_xforward


class StoredMessage:
    def __init__(self, gateway, row):
        self.gateway, self.row = gateway, row
        self.queue_id, self.mode, self.state = row.id, row.mode, row.state
        self.To = "%s@%s.vxgate" % (row.id, row.mode)
        self.From = row.mail_from
        client = row.client
        self.Peer = client.get("addr") or client.get("peer_ip", "")
        self.log = qlog(row.id)
        self.handled = False       # a handler ran (an unrouted message is an internal error)
        self.next_state = None     # set by forward(): the stage it goes to when this step ends
        self.pending = {}          # fields to record with the outcome (hook action, verdict)
        self.recipients = None     # recipients to relay to, when known without asking the database
        self.variant = None        # a modified copy to relay: True, False, or None (look on disk)

    @functools.cached_property
    def path(self):     # checked and joined once: asked four times per message
        return self.gateway.spool.path(self.queue_id)

    def data(self):
        return self.gateway.spool.read(self.queue_id)

    def output_path(self):
        """The file to relay: the modified copy when the hook changed the message, else the original."""
        if self.variant is False:
            return self.path
        modified = self.gateway.spool.variant_path(self.queue_id, "out")
        return modified if os.path.exists(modified) else self.path

    def xforward(self):
        """XFORWARD attributes to pass on, as received (already xtext-encoded)."""
        return relayable_xforward(self.row.client)

    def forward(self, state, **fields):
        self.gateway.forward(self, state, **fields)

    def __repr__(self):
        return "<StoredMessage %s %s %s>" % (self.queue_id, self.mode, self.state)
