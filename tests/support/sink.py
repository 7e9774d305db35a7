"""The tests' next hop: vxgate's own small SMTP sink (salmon_app/sink.py, also used by the demo)."""
from salmon_app.sink import AuthCredentials, SinkMessage, SinkServer  # noqa: F401
