"""systemd's readiness protocol (sd_notify(3)), by hand: one datagram to $NOTIFY_SOCKET.

Under ``Type=notify`` vxgate sends ``READY=1`` once every socket listens and recovery has
finished, ``STOPPING=1`` when it begins to shut down, ``STATUS=`` lines, and ``WATCHDOG=1``
every half ``WatchdogSec`` while its main loop runs. Outside systemd (no NOTIFY_SOCKET) every
call does nothing. An abstract socket name starts with ``@``.
"""
import os
import socket


def notify(*fields):
    """Send ``fields`` (``"READY=1"``, ...) to the service manager; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode("utf-8"), address)
    except OSError:
        return False     # a lost notification must not stop the mail; systemd's time-out reports it
    return True


def watchdog_interval():
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
