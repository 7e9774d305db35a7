"""SMTP connections whose time-outs the kernel keeps, not Python.

A Python socket with a time-out polls before every recv and send: two system calls instead of
one, and in a busy process each system call hands the interpreter lock to another thread and
waits to get it back. That was a tenth of vxgate's system calls per message. So a session's
socket (and a plain connection to the next hop) is put in blocking mode with SO_RCVTIMEO and
SO_SNDTIMEO; a read that times out then fails with EAGAIN, which ``reader()`` turns back
into the TimeoutError the callers already handle (the standard library's reader would take
it for the end of the stream).
"""
import io
import socket
import struct


def kernel_timeouts(sock, seconds):
    """Blocking mode, with reads and writes that give up after ``seconds`` (> 0)."""
    sock.settimeout(None)
    value = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class _Raw(socket.SocketIO):
    def readinto(self, b):
        try:
            return self._sock.recv_into(b)
        except BlockingIOError:       # SO_RCVTIMEO ran out
            raise TimeoutError("timed out") from None


def reader(sock, size=65536):
    """A buffered reader of ``sock`` (after ``kernel_timeouts``) raising TimeoutError on a time-out."""
    return io.BufferedReader(_Raw(sock, "rb"), size)
