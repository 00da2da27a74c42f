"""One exchange with one clamd address: connect, send, read the reply, each step bounded.

Guarantees:
- Every wait has its own bound: the connect, each write, the reply. Waiting for the caller's
  next piece of content is not ours to bound: the caller's `finish()` or `abort()` ends it.
- A failure raises `StepError` with a short ASCII reason and whether it means the clamd
  is out of reach (`lost`: a refused or lost connection, a timeout, an empty or cut-off
  reply) or only that it refused this exchange (clamd's own explanation after it stopped
  reading, such as `INSTREAM size limit exceeded`; a reply too long to be clamd's).

Plain non-blocking sockets, not asyncio streams: when clamd gives up on a stream it
replies and closes (clamd(8), INSTREAM), our next write fails, and a stream transport
would then drop the reply still waiting in the socket. A plain socket can still read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from filterd.scan.address import ClamdAddress, TcpAddress, UnixAddress
from filterd.scan.result import ScanStatus
from filterd.scan.wire import TERMINATOR, parse_instream_reply

# A clamd reply is one status line; a longer one is not clamd talking.
_REPLY_LIMIT = 4096
# After a write fails, how long to wait for clamd's own explanation.
_LAST_WORDS_TIMEOUT = 1.0


class StepError(Exception):
    """A step failed; `reason` is the short ASCII line for the result."""

    def __init__(self, reason: str, *, lost: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lost = lost


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float  # to clamd's socket
    io: float  # each write; and the whole reply to PING or VERSION
    reply: float  # end of the stream to the verdict


@dataclass(frozen=True, slots=True)
class Link:
    """How to reach one clamd; every call opens its own connection."""

    address: ClamdAddress
    timeouts: Timeouts

    async def command(self, command: bytes) -> bytes:
        """Send one short command (PING, VERSION) and return the reply, terminator included."""
        with await self._connect() as sock:
            try:
                await self._send(sock, command)
            except OSError as exc:
                raise StepError(f"connection lost while sending ({type(exc).__name__})") from exc
            # clamd answers these without scanning anything: io_timeout is ample.
            async with deadline(self.timeouts.io, "reply"):
                return _complete(await receive_reply(sock))

    async def instream(self, pieces: AsyncIterable[bytes]) -> bytes:
        """Send `pieces` (command, chunks, end chunk) and return clamd's whole reply."""
        with await self._connect() as sock:
            try:
                async for piece in pieces:
                    await self._send(sock, piece)
            except OSError as exc:
                raise await _why_send_failed(sock, exc) from exc
            async with deadline(self.timeouts.reply, "reply"):
                return _complete(await receive_reply(sock))

    async def _connect(self) -> socket.socket:
        try:
            async with deadline(self.timeouts.connect, "connect"):
                return await open_socket(self.address)
        except OSError as exc:
            raise StepError(f"connect failed ({type(exc).__name__})") from exc

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        async with deadline(self.timeouts.io, "send"):
            await asyncio.get_running_loop().sock_sendall(sock, data)


async def open_socket(address: ClamdAddress) -> socket.socket:
    """A connected non-blocking socket; for a host name, the first address that answers."""
    loop = asyncio.get_running_loop()
    targets = _literal_target(address)
    if not targets and isinstance(address, TcpAddress):
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        targets = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    error: OSError = OSError(f"no address for {address}")
    for family, sockaddr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except asyncio.CancelledError:
            sock.close()
            raise
        if family != socket.AF_UNIX:
            # Small pieces (the command, the end of a stream) must not wait for delayed ACKs.
            # Set here, not with filterd.endpoints.net.set_nodelay: the scan package must not
            # import the endpoints (tests/scan/test_layering.py).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


def _literal_target(address: ClamdAddress) -> list[tuple[int, str | tuple[object, ...]]]:
    """Where to connect without a lookup: a socket path or an IP literal; else []. A lookup
    goes through a worker thread (asyncio's getaddrinfo): measurable on every scan."""
    if isinstance(address, UnixAddress):
        return [(socket.AF_UNIX, address.path)]
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return []
    family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
    return [(family, (address.host, address.port))]


async def receive_reply(sock: socket.socket) -> bytes:
    """Everything up to and including the terminator, or what arrived before EOF."""
    loop = asyncio.get_running_loop()
    reply = bytearray()
    while TERMINATOR not in reply:
        if len(reply) > _REPLY_LIMIT:
            raise StepError("reply from clamd too long", lost=False)
        try:
            data = await loop.sock_recv(sock, _REPLY_LIMIT)
        except OSError as exc:
            raise StepError(f"connection lost while reading ({type(exc).__name__})") from exc
        if not data:
            break
        reply += data
    end = reply.find(TERMINATOR)
    return bytes(reply if end < 0 else reply[: end + 1])


def _complete(reply: bytes) -> bytes:
    """The reply, if clamd finished it; an empty or cut-off one is a lost connection."""
    if not reply.endswith(TERMINATOR):
        reason = parse_instream_reply(reply, 0.0).reason or "incomplete reply from clamd"
        raise StepError(reason)
    return reply


async def _why_send_failed(sock: socket.socket, exc: OSError) -> StepError:
    """The failure to report when clamd stopped reading before the stream ended."""
    lost = StepError(f"connection lost while sending ({type(exc).__name__})")
    try:
        async with deadline(_LAST_WORDS_TIMEOUT, "reply"):
            reply = await receive_reply(sock)
    except StepError:
        return lost
    said = parse_instream_reply(reply, 0.0)
    # Only clamd's own ERROR explains it. Anything else is about part of the content at
    # best, so it can never count as clean.
    if said.status is ScanStatus.ERROR and said.reason and said.reason.startswith("clamd:"):
        return StepError(said.reason, lost=False)
    return lost


@contextlib.asynccontextmanager
async def deadline(seconds: float, step: str) -> AsyncIterator[None]:
    """Bound one step; running out of time is a step failure like any other."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise StepError(f"{step} timeout after {seconds:g}s") from exc
