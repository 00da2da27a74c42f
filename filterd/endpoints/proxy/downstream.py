"""The SMTP client to the reinjection smtpd (Postfix on 10025), on asyncio streams.

smtplib blocks the event loop, and aiosmtpd's Proxy handler uses it (docs/explanation/proxy.md),
so this is a small client of our own: it sends lines the proxy already checked and returns the
replies as they came, for relaying to the client.

Guarantees:
- every write and every reply (all its lines) has `timeout` (Postfix's smtpd_proxy_timeout
  is per I/O, too);
- any failure (refused, reset, timeout, garbage reply) raises `DownstreamError`, and the
  connection is then unusable: the caller aborts, so a half-sent message is never completed;
- content is written only by `send_body()` after a 354, and the final `.` only by
  `end_data()`, a separate call: the session marks the message committed between the two,
  so a shutdown never cancels a message whose dot is already downstream. `send_body()`
  keeps its last view back and `end_data()` writes it with the `.` in one write: one
  segment and one wake-up of the smtpd fewer per message, and still no dot before it;
- `last_io` tells when the session last heard from the smtpd (for the keepalive NOOP).
- fewer round trips where the smtpd offers PIPELINING (RFC 2920): `commands()` sends a
  group (the client's XFORWARD lines and MAIL) in one write, and `end_data()` of a session
  that will close (`reuse` false) sends QUIT with the final `.`, so after it only `quit()`
  (which reads the 221) or `abort()` follows;
- `reuse` (set by the pool, pool.py): the session may carry another transaction, so the
  final `.` goes alone; `closed` tells that the smtpd has gone (EOF seen, or closed here).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from filterd.core import verdict as v

CRLF = b"\r\n"
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])(.*)")
# Postfix cleanup: "250 2.0.0 Ok: queued as 4Xyz1234"; the queue id is letters and digits.
_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9]+)")
# RFC 3463 §2: class.subject.detail at the start of the reply text (RFC 2034).
_STATUS = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}")
MAX_REPLY_LINES = 100
MAX_REPLY_LINE = 4096
CHUNK = 1 << 16

T = TypeVar("T")


class DownstreamError(Exception):
    """The reinjection smtpd could not be reached or broke the conversation."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[bytes, ...]  # the reply lines as received, without CRLF

    @property
    def wire(self) -> bytes:
        """The reply exactly as received, ready to relay in one write."""
        return b"".join(line + CRLF for line in self.lines)

    @property
    def text(self) -> str:
        return " ".join(line[4:].decode("ascii", "replace") for line in self.lines)

    @property
    def keywords(self) -> dict[str, str]:
        """EHLO keywords (RFC 5321 §4.1.1.1): the first word of each line after the first."""
        found = {}
        for line in self.lines[1:]:
            keyword, _, rest = line[4:].decode("ascii", "replace").partition(" ")
            found[keyword.upper()] = rest
        return found

    @property
    def queue_id(self) -> str | None:
        match = _QUEUED_AS.search(self.text)
        return match.group(1) if match else None


def refusal(reply: Reply) -> v.Verdict | None:
    """The reply as a verdict for the log line, if it refuses (4XX/5XX); None for 2XX/3XX.

    The client is sent `reply.wire`, the smtpd's own words; the log line gets the same code,
    status and text with filterd's action and a stable reason (downstream_rejected,
    downstream_tempfail), so `action`/`reason` say what the client was told.
    """
    if reply.code < 400:
        return None
    template = v.TEMPFAIL_DOWNSTREAM if reply.code < 500 else v.REJECT_DOWNSTREAM
    first = reply.lines[0][4:].decode("ascii", "replace")
    status, _, text = first.partition(" ")
    match = _STATUS.fullmatch(status)
    if match is None or int(match.group(1)) != reply.code // 100:
        status, text = template.status, first
    text = v.printable(text.strip())[:200] or template.text
    return dataclasses.replace(template, code=reply.code, status=status, text=text)


class NextHop(Protocol):
    """What the session uses of a downstream session (tests give it a fake)."""

    keywords: dict[str, str]
    last_io: float
    reuse: bool  # the pool wants it back: no QUIT with the final "."

    @property
    def closed(self) -> bool: ...

    async def command(self, line: bytes) -> Reply: ...
    async def commands(self, lines: Sequence[bytes]) -> list[Reply]: ...
    async def send_body(self, stuffed: Sequence[bytes]) -> None: ...
    async def end_data(self) -> Reply: ...
    async def quit(self) -> None: ...
    def goodbye(self) -> None: ...
    def abort(self) -> None: ...


class Connector(Protocol):
    """`Downstream.connect`, or a test's fake."""

    async def __call__(self, host: str, port: int, helo: str, io_timeout: float) -> NextHop: ...


class Downstream:
    """One SMTP session with the reinjection smtpd."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, io_timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = io_timeout
        self.keywords: dict[str, str] = {}
        self._held: memoryview | None = None  # the body's last view, sent with the final "."
        self._quit_sent = False  # QUIT went with the final "." (PIPELINING)
        self.reuse = False  # set by the pool: the session may carry another transaction
        self.last_io = asyncio.get_running_loop().time()  # the last completed read or write

    @classmethod
    async def connect(cls, host: str, port: int, helo: str, io_timeout: float) -> Downstream:
        """Connect, expect a 220 greeting, send EHLO; DownstreamError on any failure."""
        try:
            async with asyncio.timeout(io_timeout):  # no task, as wait_for would start
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY_LINE * 2)
        except (OSError, TimeoutError) as exc:
            raise DownstreamError(f"connect {host}:{port}: {exc!r}") from exc
        session = cls(reader, writer, io_timeout)
        try:
            greeting = await session.read_reply()
            if greeting.code != 220:
                raise DownstreamError(f"greeting {greeting.text!r}")
            ehlo = await session.command(b"EHLO " + helo.encode("ascii"))
            if ehlo.code != 250:
                raise DownstreamError(f"EHLO {ehlo.text!r}")
        except DownstreamError:
            session.abort()
            raise
        session.keywords = ehlo.keywords
        return session

    @property
    def closed(self) -> bool:
        """We closed the connection, or the smtpd did and nothing of its is left unread (an
        idle session that the smtpd answered 421 before closing is found at the next read)."""
        return self._writer.is_closing() or self._reader.at_eof()

    @property
    def pipelining(self) -> bool:
        """The smtpd offered PIPELINING (RFC 2920) in its EHLO reply."""
        return "PIPELINING" in self.keywords

    async def command(self, line: bytes) -> Reply:
        """Send one command line (no line end) and return its reply."""
        await self._io(self._write(line + CRLF))
        return await self.read_reply()

    async def commands(self, lines: Sequence[bytes]) -> list[Reply]:
        """Send command lines (no line ends) and return their replies, in order.

        RFC 2920 §3.1: with PIPELINING offered, commands go in one write as a group, of
        which only the last may be one whose outcome changes what follows (EHLO, DATA,
        VRFY, EXPN, TURN, QUIT, NOOP); Postfix's smtpd holds HELO, EHLO, DATA, NOOP and
        VRFY to that (smtpd.c, SMTPD_CMD_FLAG_LAST). The caller groups XFORWARD and MAIL.
        Without PIPELINING each waits for its reply.
        """
        if not self.pipelining:
            return [await self.command(line) for line in lines]
        await self._io(self._write(b"".join(line + CRLF for line in lines)))
        return [await self.read_reply() for _ in lines]

    async def send_body(self, stuffed: Sequence[bytes]) -> None:
        """Send dot-stuffed content (its pieces together end in CRLF), without the final
        `.`. Each piece goes out in views of CHUNK bytes, never copied here; waiting for
        each to drain keeps the transport's own buffer small."""
        for piece in stuffed:
            view = memoryview(piece)
            for start in range(0, len(view), CHUNK):
                if self._held is not None:
                    await self._io(self._write(self._held))
                self._held = view[start : start + CHUNK]

    async def end_data(self) -> Reply:
        """Send the final `.` and return the end-of-data reply.

        A session that ends after it (`reuse` false) sends QUIT in the same write when the
        smtpd offers PIPELINING (RFC 2920 §3.1: a command may follow the content's final `.`
        in a group), and `quit()` only reads its reply. A session the pool takes back sends
        the `.` alone: the next transaction's commands follow only after this reply.
        """
        held, self._held = self._held, None
        end = b".\r\n" if held is None else bytes(held) + b".\r\n"
        if self.pipelining and not self.reuse:
            end += b"QUIT\r\n"
            self._quit_sent = True
        await self._io(self._write(end))
        return await self.read_reply()

    async def read_reply(self) -> Reply:
        """One whole reply (all its lines) within one `timeout`."""
        return await self._io(self._reply_lines())

    async def _reply_lines(self) -> Reply:
        # One deadline for the reply, not one per line: an EHLO reply is a dozen lines that
        # arrive in one segment, and each deadline is a timer set and cancelled.
        lines: list[bytes] = []
        while len(lines) < MAX_REPLY_LINES:
            raw = await self._reader.readuntil(b"\n")
            line = raw.rstrip(b"\r\n")
            match = _REPLY_LINE.fullmatch(line)
            if match is None or (lines and match.group(1) != lines[0][:3]):
                raise DownstreamError(f"malformed reply line {line[:80]!r}")
            lines.append(line)
            if match.group(2) == b" ":
                return Reply(int(match.group(1)), tuple(lines))
        raise DownstreamError("reply too long")

    async def quit(self) -> None:
        """QUIT politely (best effort), then close."""
        with contextlib.suppress(DownstreamError):
            if self._quit_sent:
                await self.read_reply()
            else:
                await self.command(b"QUIT")
        self.abort()

    def goodbye(self) -> None:
        """QUIT without waiting for the 221, then close (an idle pooled session at its end).

        Postfix's smtpd does the same with its proxy filter (smtpd.c, mail_reset(): "Don't
        bother waiting for a reply, it just increases latency"). No transaction is open.
        """
        if not self._writer.is_closing():
            self._writer.write(b"QUIT" + CRLF)
        self._writer.close()

    def abort(self) -> None:
        """Close at once; an unfinished transaction is never completed (no final `.` sent)."""
        self._writer.close()

    async def _write(self, data: bytes | memoryview) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def _io(self, step: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):  # no task per I/O, as wait_for makes
                result = await step
        except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError) as exc:
            raise DownstreamError(repr(exc)) from exc
        except asyncio.LimitOverrunError as exc:
            raise DownstreamError("reply line too long") from exc
        self.last_io = asyncio.get_running_loop().time()
        return result
