#!/usr/bin/env python3
"""A bare threaded, durable SMTP content filter: the "what Python can do here" reference.

It does per message what any durable after-queue filter must and nothing else: read DATA
(un-dot-stuffing each line), write it to ``<spool>/tmp/<id>``, fsync, rename into
``<spool>/<xx>/<id>``, fsync the directory, relay the stored bytes (dot-stuffed again) to
the next hop over a kept connection (an idle pool shared by the sessions), answer the next hop's reply
(250 only after that), and unlink the file. A thread per client connection
(``socketserver``), no database, no parsing, no policy, no logging per message. The
benchmark (``bench/passthrough.py``) compares vxgate with it; it is not part of vxgate.

Usage: barefilter.py LISTEN_PORT NEXT_HOP_PORT SPOOL_DIR   (loopback only; stdlib only)
"""
import os
import socket
import socketserver
import sys
import threading

HOSTNAME = "barefilter.bench.example"


class NextHop:
    """One kept SMTP connection to the next hop (per session thread)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.reply()
        self.command(b"EHLO " + HOSTNAME.encode())

    def reply(self):
        while True:
            line = self.file.readline()
            if not line:
                raise OSError("next hop closed the connection")
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].rstrip(b"\r\n")

    def command(self, line):
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, mail_from, rcpts, path):
        code, text = self.command(b"MAIL FROM:<" + mail_from + b">")
        if code != 250:
            self.command(b"RSET")
            return code, text
        accepted = 0
        for rcpt in rcpts:
            code, text = self.command(b"RCPT TO:<" + rcpt + b">")
            accepted += code in (250, 251)
        if not accepted:
            self.command(b"RSET")
            return code, text
        code, text = self.command(b"DATA")
        if code != 354:
            return code, text
        out = []
        with open(path, "rb") as handle:
            for line in handle:
                out.append(b"." + line if line[:1] == b"." else line)
        out.append(b".\r\n")
        self.sock.sendall(b"".join(out))
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Session(socketserver.StreamRequestHandler):
    def setup(self):
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def say(self, text):
        self.wfile.write(text + b"\r\n")
        self.wfile.flush()

    def handle(self):
        server = self.server
        self.say(b"220 " + HOSTNAME.encode() + b" ESMTP bare filter")
        mail_from, rcpts = None, []
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250-" + HOSTNAME.encode() + b"\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                self.wfile.flush()
            elif verb == b"MAIL":
                mail_from, rcpts = _address(line), []
                self.say(b"250 2.1.0 Ok")
            elif verb == b"RCPT":
                rcpts.append(_address(line))
                self.say(b"250 2.1.5 Ok")
            elif verb == b"DATA":
                if mail_from is None or not rcpts:
                    self.say(b"503 5.5.1 Error: need MAIL and RCPT")
                    continue
                self.say(b"354 End data with <CR><LF>.<CR><LF>")
                self.say(self.message(server, mail_from, rcpts))
                mail_from, rcpts = None, []
            elif verb == b"RSET":
                mail_from, rcpts = None, []
                self.say(b"250 2.0.0 Ok")
            elif verb == b"QUIT":
                self.say(b"221 2.0.0 Bye")
                return
            elif verb == b"NOOP":
                self.say(b"250 2.0.0 Ok")
            else:
                self.say(b"502 5.5.2 Error: command not recognized")

    def message(self, server, mail_from, rcpts):
        queue_id = "%016X" % next(server.ids)
        tmp = os.path.join(server.spool, "tmp", queue_id)
        folder = os.path.join(server.spool, queue_id[-2:])
        final = os.path.join(folder, queue_id)
        with open(tmp, "wb", buffering=256 * 1024) as handle:
            while True:
                line = self.rfile.readline(65536)
                if not line:
                    return b"421 lost"
                if line == b".\r\n":
                    break
                handle.write(line[1:] if line[:1] == b"." else line)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, final)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        hop = server.pool.take()
        try:
            if hop is None:
                hop = NextHop(server.next_hop)
            code, text = hop.send(mail_from, rcpts, final)
        except OSError as exc:
            if hop is not None:
                hop.close()
            return b"451 4.4.1 next hop: " + str(exc).encode()
        server.pool.give(hop)
        if 200 <= code < 300:
            os.unlink(final)
        return b"%d %s" % (code, text)


def _address(line):
    start, end = line.find(b"<"), line.find(b">")
    return line[start + 1:end] if 0 <= start < end else b""


class Pool:
    """Idle next-hop connections: a session takes one for a message and gives it back, so a
    new client connection per message still reuses the next hop's connections."""

    def __init__(self):
        self.idle, self.lock = [], threading.Lock()

    def take(self):
        with self.lock:
            return self.idle.pop() if self.idle else None

    def give(self, hop):
        with self.lock:
            self.idle.append(hop)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def _counter():
    number = 0
    while True:
        number += 1
        yield number


def main():
    port, next_hop, spool = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.makedirs(os.path.join(spool, "tmp"), exist_ok=True)
    for number in range(256):
        os.makedirs(os.path.join(spool, "%02X" % number), exist_ok=True)
    server = Server(("127.0.0.1", port), Session)
    server.spool, server.next_hop, server.pool = spool, next_hop, Pool()
    ids, lock = _counter(), threading.Lock()

    class Ids:
        def __next__(self):
            with lock:
                return next(ids)
    server.ids = Ids()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
