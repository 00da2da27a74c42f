"""A minimal SMTP client for the hostile-load and soak benches: raw bytes on the wire.

Not smtplib: smtplib dot-stuffs after a bare LF too (`(?m)^\\.`), which rewrites the very
content a smuggling attempt is made of, and it has no total deadline per transaction. Here
the caller gives the bytes that follow DATA, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass


class SmtpError(Exception):
    """The server broke the session (closed, garbled reply, timed out)."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str  # every line of the reply, joined by "\n", without the codes

    @property
    def short(self) -> str:
        """The code and, when the reply has one, its RFC 3463 enhanced status code."""
        first = self.text.split(maxsplit=1)[:1]
        enhanced = first[0] if first and first[0][:1] in "245" and "." in first[0] else ""
        return f"{self.code} {enhanced}".strip()


def parse_line(line: bytes) -> tuple[int, bool, str]:
    """(code, is the last line, text) of one reply line (RFC 5321 §4.2)."""
    text = line.rstrip(b"\r\n").decode("ascii", "replace")
    if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
        msg = f"not an SMTP reply line: {text[:80]!r}"
        raise SmtpError(msg)
    return int(text[:3]), text[3:4] != "-", text[4:]


class ReplyLines:
    """The lines of one reply as they arrive, sync or async alike."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, line: bytes) -> Reply | None:
        """Take one line; the whole reply once `line` is its last, else None."""
        if not line:
            raise SmtpError("connection closed")
        code, last, text = parse_line(line)
        self.texts.append(text)
        return Reply(code, "\n".join(self.texts)) if last else None


def stuffed(content: bytes) -> bytes:
    """`content` ready to follow DATA: dot-stuffed CRLF lines and the final "." line
    (RFC 5321 §4.5.2). Only CRLF starts a line here, as in the RFC."""
    body = content if content.endswith(b"\r\n") else content + b"\r\n"
    body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"


class SyncSession:
    """A blocking SMTP session with one deadline for everything it does."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        self.deadline = deadline
        self.sock = socket.create_connection((host, port), timeout=self._left())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("transaction deadline")
        return left

    def reply(self) -> Reply:
        lines = ReplyLines()
        while True:
            self.sock.settimeout(self._left())
            if reply := lines.add(self.file.readline(4096)):
                return reply

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._left())
        self.sock.sendall(data)

    def command(self, line: str) -> Reply:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class AsyncSession:
    """An asyncio SMTP session; every read is bounded by `timeout` seconds."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float

    @classmethod
    async def open(cls, host: str, port: int, wait: float) -> AsyncSession:
        """Connect within `wait` seconds; every later read is bounded by `wait` too."""
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
        return cls(reader, writer, wait)

    async def reply(self) -> Reply:
        lines = ReplyLines()
        async with asyncio.timeout(self.timeout):
            while True:
                if reply := lines.add(await self.reader.readline()):
                    return reply

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    async def command(self, line: str) -> Reply:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def envelope(self, sender: str, recipients: list[str]) -> Reply:
        """Greeting, EHLO, MAIL, RCPT..., DATA; the first reply that is not a success, or
        the 354."""
        steps = [
            "EHLO client.example.test",
            f"MAIL FROM:<{sender}>",
            *(f"RCPT TO:<{rcpt}>" for rcpt in recipients),
        ]
        reply = await self.reply()
        for line in steps:
            if reply.code >= 400:
                return reply
            reply = await self.command(line)
        return reply if reply.code >= 400 else await self.command("DATA")

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass
