"""Fakes and clients for tests and tools: not used by filterd itself.

What is here, and what each promises:
- `FakeScanner`: a `Scanner` in memory. Content holding `VIRUS-<name>` is infected with
  `<name>` (up to the next whitespace); anything else gets the configured result, which may
  also be an exception to raise. It records every content it was given, and can wait first.
  `stream()` gives a `FakeStream` that gathers the chunks and answers at `finish()` as
  `scan()` would on their concatenation (or OVERSIZE past `max_scan_size`).
- `RawSmtpClient`: an SMTP client over a plain socket that sends exactly the bytes it is
  given and reads whole replies (RFC 5321 §4.2.1 multi-line form) against a deadline, so a
  test never hangs on a server that stays silent. It does no framing, dot-stuffing or
  sequencing of its own: that is the point.
- `eicar()`: the 68-byte EICAR anti-virus test file, assembled at run time from two halves
  and checked against its published SHA-256, so no scanner ever finds it in the repository.

The smuggling harness (`filterd.harness`) keeps its own client on purpose: it is an
independent judge of SMTP servers, filterd's among them, and imports nothing of filterd.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

from filterd.scan import ScanResult

# --- fake scanner -------------------------------------------------------------------------

VIRUS_PREFIX: Final = b"VIRUS-"
# A ready marker: content holding it is infected with "Fake.Marker".
VIRUS_MARKER: Final = VIRUS_PREFIX + b"Fake.Marker"


def virus_name(content: bytes) -> str | None:
    """The name after the first `VIRUS-` in `content`, or None when there is none."""
    start = content.find(VIRUS_PREFIX)
    if start < 0:
        return None
    rest = content[start + len(VIRUS_PREFIX) :].split(maxsplit=1)
    return rest[0].decode("ascii", "replace") if rest else ""


@dataclass
class FakeScanner:
    """A Scanner: infected when `VIRUS-<name>` is in the content, else `result`.

    `result` may be an exception, which `scan` then raises (a scanner that breaks).
    `delay` seconds pass before the answer; `scanned` records every content, in order.
    """

    result: ScanResult | Exception = field(default_factory=ScanResult.clean)
    delay: float = 0.0
    scanned: list[bytes] = field(default_factory=list)
    max_scan_size: int | None = None  # streams over it finish OVERSIZE; None: no limit
    streams: list[FakeStream] = field(default_factory=list)

    async def scan(self, content: bytes) -> ScanResult:
        self.scanned.append(content)
        if self.delay:
            await asyncio.sleep(self.delay)
        name = virus_name(content)
        if name is not None:
            return ScanResult.infected(name)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def stream(self, size_hint: int = 0) -> FakeStream:
        stream = FakeStream(self, size_hint)
        self.streams.append(stream)
        return stream


@dataclass
class FakeStream:
    """A ScanStream of FakeScanner: `chunks` as fed; `state` is open, finished or aborted."""

    scanner: FakeScanner
    size_hint: int = 0
    chunks: list[bytes] = field(default_factory=list)
    state: str = "open"

    def feed(self, chunk: bytes) -> None:
        if self.state != "open":
            raise RuntimeError(f"feed() on a stream that is {self.state}")
        self.chunks.append(chunk)

    async def finish(self) -> ScanResult:
        if self.state != "open":
            raise RuntimeError(f"finish() on a stream that is {self.state}")
        self.state = "finished"
        size = sum(map(len, self.chunks))
        limit = self.scanner.max_scan_size
        if limit is not None and size > limit:
            return ScanResult.oversize(f"{size} bytes exceed max_scan_size {limit}")
        return await self.scanner.scan(b"".join(self.chunks))

    def abort(self) -> None:
        self.state = "aborted"


# --- raw-bytes SMTP client ----------------------------------------------------------------


class RawSmtpClient:
    """Send exactly these bytes to an SMTP server; read replies with a deadline.

    TCP_NODELAY is set so that each `send` leaves as its own segment where the test wants
    to split a command (pipelining and framing tests depend on it).
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole (multi-line) reply, its lines joined by "\\n"; "" if the server closed
        before a line (what it sent of a partial reply is returned)."""
        lines: list[str] = []
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\r\n" not in self.buffer:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\n".join(lines)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            # RFC 5321 §4.2.1: "-" after the code continues the reply, " " ends it.
            if len(line) < 4 or line[3:4] == b" ":
                return "\n".join(lines)

    def command(self, data: bytes) -> str:
        """Send `data`, then read one reply."""
        self.send(data)
        return self.reply()

    def closed(self) -> bool:
        """True when the server closes the connection within the timeout (reads EOF)."""
        self.sock.settimeout(self.timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False
        except OSError:
            return True

    def read_until_closed(self, window: float) -> bytes:
        """Everything the server sends within `window` seconds or until it closes."""
        self.sock.settimeout(window)
        data, self.buffer = self.buffer, b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except OSError:
            pass
        return data

    def close(self) -> None:
        self.sock.close()


def last_line(reply: str) -> str:
    """The last line of a (multi-line) reply: the one that carries the final word."""
    return reply.rsplit("\n", 1)[-1]


def smtp_session(
    port: int, helo: bytes = b"EHLO client.example\r\n", timeout: float = 5.0
) -> RawSmtpClient:
    """A raw client past the 220 greeting and a 250 answer to `helo`."""
    client = RawSmtpClient(port, timeout=timeout)
    greeting = client.reply()
    if not greeting.startswith("220 "):
        client.close()
        raise ConnectionError(f"no 220 greeting: {greeting!r}")
    ehlo = client.command(helo)
    if not ehlo.startswith("250"):
        client.close()
        raise ConnectionError(f"{helo!r} refused: {ehlo!r}")
    return client


# --- EICAR --------------------------------------------------------------------------------

_EICAR_HALVES: Final = (
    "WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLQ==",
    "U1RBTkRBUkQtQU5USVZJUlVTLVRFU1QtRklMRSEkSCtIKg==",
)
# The 68-byte EICAR file (no trailing newline), as published by eicar.org.
_EICAR_SHA256: Final = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


def eicar() -> bytes:
    """The 68-byte EICAR anti-virus test file, built at run time."""
    data = b"".join(base64.b64decode(half) for half in _EICAR_HALVES)
    if hashlib.sha256(data).hexdigest() != _EICAR_SHA256:  # guards a typo in the halves
        raise AssertionError("EICAR halves do not decode to the published test file")
    return data
