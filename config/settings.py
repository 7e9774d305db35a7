"""Values: the vxgate configuration file ($VXGATE_CONFIG, /etc/vxgate/vxgate.ini or
config/vxgate.ini), loaded once.

A bad file stops start-up here with ``file:line: what is wrong``; ``vxgate check-config``
says the same without starting anything.
"""
import os
import sys

# Salmon imports this module first; python-daemon left the umask at 0. Mail is private: nothing
# vxgate creates from here on (spool, database and its WAL, logs, parents of both) is readable
# by other users, whoever started the process.
os.umask(0o077)

from salmon_app import config as _config  # noqa: E402

try:
    CONFIG = _config.load()
except _config.ConfigError as exc:
    print("vxgate: configuration error: %s" % exc, file=sys.stderr)
    raise SystemExit(2)

# Salmon's start command calls receiver.start(); config/boot.py sets it.
receiver = None
