"""Scan mail with clamd over its INSTREAM command, asynchronously.

Guarantees:
- `scan()` returns CLEAN only when clamd answered `stream: OK` after the whole content.
  Any failure (refused, reset, broken pipe, timeout, garbage, silence, a bug here) is
  ERROR with a short reason; nothing but cancellation escapes as an exception.
- Every wait is bounded: the queue for a free slot, the connect, each write, the reply.
- Content larger than `max_scan_size` is never sent; the result is OVERSIZE. Keep
  `max_scan_size` at or below clamd's StreamMaxLength (clamd.conf(5)), or clamd cuts
  the stream off with `INSTREAM size limit exceeded` and the result is ERROR.
- At most `max_concurrent` connections are open to clamd for scans. clamd runs at most
  MaxThreads scans (clamd.conf(5), default 10) and queues the rest; queueing here
  instead keeps the reply timeout honest.

Plain non-blocking sockets, not asyncio streams: when clamd gives up on a stream it
replies and closes (clamd(8), INSTREAM), our next write fails, and a stream transport
would then drop the reply still waiting in the socket. A plain socket can still read it.
Why not the `clamd` package: see docs/explanation/scanner.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import structlog

from filterd.scan.address import ClamdAddress, UnixAddress, parse_address
from filterd.scan.result import ScanResult, ScanStatus
from filterd.scan.slots import ScanSlots
from filterd.scan.wire import (
    TERMINATOR,
    instream_request,
    parse_instream_reply,
)

# clamd.conf(5): StreamMaxLength defaults to 25M (25 MiB).
DEFAULT_MAX_SCAN_SIZE = 25 * 1024 * 1024
# clamd.conf(5): MaxThreads defaults to 10.
DEFAULT_MAX_CONCURRENT = 10
# The other defaults are filterd's own; [clamd] in the configuration (filterd/config.py)
# takes every default from here.
DEFAULT_CONNECT_TIMEOUT = 5.0  # to clamd's socket: a local daemon answers at once
DEFAULT_IO_TIMEOUT = 10.0  # each write of the stream
DEFAULT_REPLY_TIMEOUT = 60.0  # end of the stream to the verdict: a big message takes a while
DEFAULT_QUEUE_TIMEOUT = 15.0  # waiting for a free scan slot, then "scanner busy"
# A clamd reply is one status line; a longer one is not clamd talking.
_REPLY_LIMIT = 4096
# After a write fails, how long to wait for clamd's own explanation.
_LAST_WORDS_TIMEOUT = 1.0

_log = structlog.get_logger(__name__)


class _StepError(Exception):
    """A scan step failed; `reason` is the short ASCII line for the result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClamdScanner:
    """A `Scanner` backed by clamd; one connection per scan."""

    # Keyword-only settings, one per configuration key: a settings object would only
    # repeat them.
    def __init__(  # noqa: PLR0913
        self,
        address: str | ClamdAddress,
        *,
        max_scan_size: int = DEFAULT_MAX_SCAN_SIZE,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
    ) -> None:
        _require_positive(
            max_scan_size=max_scan_size,
            max_concurrent=max_concurrent,
            connect_timeout=connect_timeout,
            io_timeout=io_timeout,
            reply_timeout=reply_timeout,
            queue_timeout=queue_timeout,
        )
        self.address = parse_address(address) if isinstance(address, str) else address
        self.max_scan_size = max_scan_size
        self.max_concurrent = max_concurrent
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.reply_timeout = reply_timeout
        self.queue_timeout = queue_timeout
        self._slots = ScanSlots(max_concurrent)  # small messages first, none starved

    async def scan(self, content: bytes) -> ScanResult:
        started = time.monotonic()
        if len(content) > self.max_scan_size:
            reason = f"{len(content)} bytes exceed max_scan_size {self.max_scan_size}"
            return ScanResult.oversize(reason, _since(started))
        try:
            async with asyncio.timeout(self.queue_timeout):
                big = await self._slots.acquire(len(content))
        except TimeoutError:
            # clamd is slow or stuck; waiting longer would only pile up sessions.
            return ScanResult.error("scanner busy", _since(started))
        try:
            reply = await self._instream(content)
        except _StepError as failure:
            return ScanResult.error(failure.reason, _since(started))
        except Exception as exc:
            # A bug here must not let mail through unscanned: report it and move on.
            _log.exception("clamd scan failed unexpectedly", address=str(self.address))
            return ScanResult.error(f"internal error ({type(exc).__name__})", _since(started))
        finally:
            self._slots.release(big=big)
        return parse_instream_reply(reply, _since(started))

    async def _instream(self, content: bytes) -> bytes:
        with await self._connect() as sock:
            try:
                for piece in instream_request(content):
                    await self._send(sock, piece)
            except OSError as exc:
                raise _StepError(await _why_send_failed(sock, exc)) from exc
            async with _deadline(self.reply_timeout, "reply"):
                return await _receive_reply(sock)

    async def _connect(self) -> socket.socket:
        try:
            async with _deadline(self.connect_timeout, "connect"):
                return await _open(self.address)
        except OSError as exc:
            raise _StepError(f"connect failed ({type(exc).__name__})") from exc

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        async with _deadline(self.io_timeout, "send"):
            await asyncio.get_running_loop().sock_sendall(sock, data)


async def _open(address: ClamdAddress) -> socket.socket:
    """A connected non-blocking socket; for a host name, the first address that answers."""
    loop = asyncio.get_running_loop()
    if isinstance(address, UnixAddress):
        targets: list[tuple[int, str | tuple[object, ...]]] = [(socket.AF_UNIX, address.path)]
    else:
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


async def _receive_reply(sock: socket.socket) -> bytes:
    """Everything up to and including the terminator, or what arrived before EOF."""
    loop = asyncio.get_running_loop()
    reply = bytearray()
    while TERMINATOR not in reply:
        if len(reply) > _REPLY_LIMIT:
            raise _StepError("reply from clamd too long")
        try:
            data = await loop.sock_recv(sock, _REPLY_LIMIT)
        except OSError as exc:
            raise _StepError(f"connection lost while reading ({type(exc).__name__})") from exc
        if not data:
            break
        reply += data
    end = reply.find(TERMINATOR)
    return bytes(reply if end < 0 else reply[: end + 1])


async def _why_send_failed(sock: socket.socket, exc: OSError) -> str:
    """The reason to report when clamd stopped reading before the stream ended."""
    lost = f"connection lost while sending ({type(exc).__name__})"
    try:
        async with _deadline(_LAST_WORDS_TIMEOUT, "reply"):
            reply = await _receive_reply(sock)
    except _StepError:
        return lost
    said = parse_instream_reply(reply, 0.0)
    # Only clamd's own ERROR explains it. Anything else is about part of the content at
    # best, so it can never count as clean.
    if said.status is ScanStatus.ERROR and said.reason and said.reason.startswith("clamd:"):
        return said.reason
    return lost


@contextlib.asynccontextmanager
async def _deadline(seconds: float, step: str) -> AsyncIterator[None]:
    """Bound one step; running out of time is a step failure like any other."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise _StepError(f"{step} timeout after {seconds:g}s") from exc


def _since(started: float) -> float:
    return time.monotonic() - started


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
