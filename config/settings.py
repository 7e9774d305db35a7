"""Values: the vxgate configuration file ($VXGATE_CONFIG or config/vxgate.ini), loaded once.

A bad file stops start-up here with ``file:line: what is wrong``; ``vxgate check-config``
says the same without starting anything.
"""
import sys

from salmon_app import config as _config

try:
    CONFIG = _config.load()
except _config.ConfigError as exc:
    print("vxgate: configuration error: %s" % exc, file=sys.stderr)
    raise SystemExit(2)

# Salmon's start command calls receiver.start(); config/boot.py sets it.
receiver = None
