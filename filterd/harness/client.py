"""A raw-bytes SMTP client: it sends exactly the bytes it is given and records everything.

Replies are read line by line across as many recv() calls as it takes, until the expected
number of replies arrived, the server closed, or a deadline passed: a server may write a
multi-line reply line by line, so one recv() per reply falls out of step. Nothing here decides
anything; probe.py does the talking and verdict.py the judging.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

from filterd.harness.reply import Reply, ReplyParser

RECV_SIZE = 65536


@dataclass(frozen=True)
class Sent:
    at: float  # seconds since the connection was opened
    data: bytes


@dataclass
class Client:
    sock: socket.socket
    started: float
    parser: ReplyParser = field(default_factory=ReplyParser)
    transcript: list[Sent | Reply] = field(default_factory=list)
    closed: bool = False

    @classmethod
    def connect(cls, host: str, port: int, timeout: float) -> Client:
        sock = socket.create_connection((host, port), timeout=timeout)
        # Small writes meet Nagle's algorithm and delayed ACKs (RFC 896, RFC 1122 §4.2.3.2):
        # send each write at once, so a probe's timing is the one it asks for.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, time.monotonic())

    def now(self) -> float:
        return time.monotonic() - self.started

    @property
    def local_address(self) -> str:
        return str(self.sock.getsockname()[0])

    def send(self, data: bytes) -> None:
        """Write all of `data` in one sendall(), so it leaves together."""
        if not data or self.closed:
            return
        self.transcript.append(Sent(self.now(), data))
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def read(self, want: int, timeout: float) -> list[Reply]:
        """Replies until `want` of them arrived, the server closed, or `timeout` passed."""
        deadline = time.monotonic() + timeout
        got: list[Reply] = []
        while len(got) < want and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            got.extend(self._receive(remaining))
        return got

    def _receive(self, remaining: float) -> list[Reply]:
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            return []
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return []
        replies = self.parser.feed(data, self.now())
        self.transcript.extend(replies)
        return replies

    def starttls(self, timeout: float) -> None:
        """TLS handshake on the open connection (RFC 3207 §4). Raises ssl.SSLError or OSError."""
        # A probe judges the server's SMTP, not its certificate: nothing is verified.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock.settimeout(timeout)
        self.sock = context.wrap_socket(self.sock)
        self.parser = ReplyParser()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
