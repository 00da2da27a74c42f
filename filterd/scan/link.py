"""One exchange with one clamd address: connect, send, read the reply, each step bounded.

Guarantees:
- Every wait has its own bound: the connect, each write, the reply. Waiting for the caller's
  next piece of content is not ours to bound: the caller's `finish()` or `abort()` ends it.
- A failure raises `StepError` with a short ASCII reason and whether it means the clamd
  is out of reach (`lost`: a refused or lost connection, a timeout, an empty or cut-off
  reply) or only that it refused this exchange (clamd's own explanation after it stopped
  reading, such as `INSTREAM size limit exceeded`; a reply too long to be clamd's).

Plain non-blocking sockets, not asyncio streams or a Protocol: when clamd gives up on a stream it
replies and closes (clamd(8), INSTREAM), our next write fails, and a stream transport
would then drop the reply still waiting in the socket. A plain socket can still read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from filterd.scan.address import ClamdAddress, TcpAddress, UnixAddress
from filterd.scan.result import ScanStatus
from filterd.scan.wire import TERMINATOR, Buffer, parse_instream_reply, session_reply

# A clamd reply is one status line; a longer one is not clamd talking.
_REPLY_LIMIT = 4096
# After a write fails, how long to wait for clamd's own explanation.
_LAST_WORDS_TIMEOUT = 1.0
# The request, in groups of buffers: each group one gathered write.
Groups = AsyncIterable[list[Buffer]]
# Buffers per sendmsg(2): below Linux's IOV_MAX (1024), or the call fails with EMSGSIZE.
_IOV_MAX = 512


class StepError(Exception):
    """A step failed; `reason` is the short ASCII line for the result."""

    def __init__(self, reason: str, *, lost: bool = True, dead: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lost = lost
        # The connection was gone before clamd said a word (EOF, reset, a failed write):
        # on a reused session, clamd had closed it (session.py).
        self.dead = dead


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float  # to clamd's socket
    io: float  # each write; and the whole reply to PING or VERSION
    reply: float  # end of the stream to the verdict


@dataclass(frozen=True, slots=True)
class Link:
    """How to reach one clamd; every call opens its own connection, unless `instream` is
    given an open session's socket (session.py)."""

    address: ClamdAddress
    timeouts: Timeouts

    async def command(self, command: bytes) -> bytes:
        """Send one short command (PING, VERSION) and return the reply, terminator included."""
        steps = Steps()
        try:
            async with steps:
                with await self._connect(steps) as sock:
                    steps.start("send", self.timeouts.io)
                    try:
                        await send_buffers(sock, [command])
                    except TimeoutError:
                        raise
                    except OSError as exc:
                        reason = f"connection lost while sending ({type(exc).__name__})"
                        raise StepError(reason) from exc
                    # clamd answers these without scanning anything: io_timeout is ample.
                    steps.start("reply", self.timeouts.io)
                    return _complete(await receive_reply(sock))
        except TimeoutError as exc:
            raise steps.expired(exc) from exc

    async def instream(
        self,
        groups: Groups,
        *,
        on: socket.socket | None = None,
        number: int = 0,
    ) -> bytes:
        """Send `groups` (command, chunks, end chunk; each group one bounded write, gathered)
        and return clamd's whole reply. With `on`, over that open zIDSESSION socket as its
        request `number`, the reply without its `<id>: `; the caller keeps or closes it."""
        steps = Steps()
        try:
            async with steps:
                if on is not None:
                    return await self._exchange(steps, on, groups, number)
                with await self._connect(steps) as sock:
                    return await self._exchange(steps, sock, groups, 0)
        except TimeoutError as exc:
            raise steps.expired(exc) from exc

    async def open(self, greeting: bytes) -> socket.socket:
        """A new connection that has sent `greeting` (zIDSESSION), each step bounded."""
        steps = Steps()
        try:
            async with steps:
                sock = await self._connect(steps)
                try:
                    steps.start("send", self.timeouts.io)
                    await send_buffers(sock, [greeting])
                except BaseException:
                    sock.close()
                    raise
                return sock
        except OSError as exc:
            raise StepError(f"connection lost while sending ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            raise steps.expired(exc) from exc

    async def _exchange(
        self, steps: Steps, sock: socket.socket, groups: Groups, number: int
    ) -> bytes:
        await self._send_all(steps, sock, groups, number)
        steps.start("reply", self.timeouts.reply)
        reply = await receive_reply(sock)
        return _complete(reply) if not number else _own_reply(reply, number)

    async def _connect(self, steps: Steps) -> socket.socket:
        steps.start("connect", self.timeouts.connect)
        try:
            return await open_socket(self.address)
        except TimeoutError:
            raise  # the step's timeout, as an expired timer is
        except OSError as exc:
            raise StepError(f"connect failed ({type(exc).__name__})") from exc

    async def _send_all(
        self, steps: Steps, sock: socket.socket, groups: Groups, number: int
    ) -> None:
        try:
            steps.start("source", None)  # the caller's next content is not ours to bound
            async for group in groups:
                steps.start("send", self.timeouts.io)
                await send_buffers(sock, group)
                steps.start("source", None)
        except TimeoutError:
            raise
        except OSError as exc:
            steps.start("last words", None)  # _why_send_failed has its own bound
            raise await _why_send_failed(sock, exc, number) from exc


class Steps:
    """One timer for the steps of one exchange (connect, each write, the reply), each step
    bounded by its own seconds from when it starts. A `TimeoutError` out of it becomes
    `expired()`, naming the step that ran out.

    One timer handle per exchange, not one per step: a step's end only moves `_due`; the
    handle is re-armed when it fires early (the step after it had a later end) or when a
    step must end sooner than the handle fires. Each step still ends exactly at its own
    bound; an exchange that ends within the first bound schedules one handle."""

    __slots__ = ("_armed", "_due", "_handle", "_loop", "_timeout", "name", "seconds")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(None)  # expired by _check, through reschedule
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0  # when _handle fires
        self._due: float | None = None  # when the current step runs out; None: unbounded
        self.name = ""
        self.seconds: float | None = None

    async def __aenter__(self) -> Self:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await self._timeout.__aexit__(kind, exc, traceback)

    def start(self, name: str, seconds: float | None) -> None:
        self.name, self.seconds = name, seconds
        if seconds is None:
            self._due = None
            return
        self._due = due = self._loop.time() + seconds
        if self._handle is None or due < self._armed:
            self._arm(due)

    def expired(self, exc: TimeoutError) -> BaseException:
        """The step failure for `exc`; a step without a bound (the caller's) passes it on."""
        if self.seconds is None:
            return exc
        return StepError(f"{self.name} timeout after {self.seconds:g}s")

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._check)
        self._armed = when

    def _check(self) -> None:
        self._handle = None
        due = self._due
        if due is None:
            return  # waiting for the caller; the next step arms again
        now = self._loop.time()
        if due <= now:
            self._timeout.reschedule(now)  # expire: the task is cancelled, then TimeoutError
        else:
            self._arm(due)


async def send_buffers(sock: socket.socket, buffers: list[Buffer]) -> None:
    """Write `buffers` in order, gathered (sendmsg(2), no copy into one buffer), waiting for
    room in the socket as needed. asyncio has no gathered send on a socket (sock_sendall
    takes one buffer), hence this loop."""
    while buffers:
        try:
            sent = sock.sendmsg(buffers[:_IOV_MAX])
        except (BlockingIOError, InterruptedError):
            sent = 0
        buffers = _unsent(buffers, sent)
        if buffers:
            await _writable(sock)


def _unsent(buffers: list[Buffer], sent: int) -> list[Buffer]:
    """What is left of `buffers` once their first `sent` bytes are written."""
    index = 0
    while index < len(buffers) and sent >= len(buffers[index]):
        sent -= len(buffers[index])
        index += 1
    rest = buffers[index:]
    if sent:
        rest[0] = memoryview(rest[0])[sent:]
    return rest


async def _writable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # the writer may fire again before the waiter runs
        ready.set_result(None)


async def open_socket(address: ClamdAddress) -> socket.socket:
    """A connected non-blocking socket; for a host name, the first address that answers."""
    loop = asyncio.get_running_loop()
    targets = _literal_target(address)
    if not targets and isinstance(address, TcpAddress):
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        targets = tuple((family, sockaddr) for family, _, _, _, sockaddr in infos)
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


@functools.lru_cache(maxsize=256)  # the configured addresses: parsed once, not per scan
def _literal_target(address: ClamdAddress) -> tuple[tuple[int, str | tuple[object, ...]], ...]:
    """Where to connect without a lookup: a socket path or an IP literal; else (). A lookup
    goes through a worker thread (asyncio's getaddrinfo): measurable on every scan."""
    if isinstance(address, UnixAddress):
        return ((socket.AF_UNIX, address.path),)
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return ()
    family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
    return ((family, (address.host, address.port)),)


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
            reason = f"connection lost while reading ({type(exc).__name__})"
            raise StepError(reason, dead=not reply) from exc
        if not data:
            break
        reply += data
    end = reply.find(TERMINATOR)
    return bytes(reply if end < 0 else reply[: end + 1])


def _complete(reply: bytes) -> bytes:
    """The reply, if clamd finished it; an empty or cut-off one is a lost connection."""
    if not reply.endswith(TERMINATOR):
        raise StepError(_complete_reason(reply), dead=not reply)
    return reply


def _complete_reason(reply: bytes) -> str:
    return parse_instream_reply(reply, 0.0).reason or "incomplete reply from clamd"


def _own_reply(reply: bytes, number: int) -> bytes:
    """A session's reply without its `<id>: ` (clamd(8), IDSESSION), if the id is `number`.
    Words without the id, then EOF, were not an answer: clamd closed the session before our
    request (measured, clamd 1.4.6: `COMMAND READ TIMED OUT` then EOF after ReadTimeout)."""
    rest = session_reply(reply, number)
    if rest is None:
        if not reply.endswith(TERMINATOR):
            raise StepError(_complete_reason(reply), dead=True)
        raise StepError("reply from clamd not for this request", lost=False)
    if not rest.endswith(TERMINATOR):
        raise StepError(_complete_reason(rest))  # cut off after the id: lost, not dead
    return rest


async def _why_send_failed(sock: socket.socket, exc: OSError, number: int) -> StepError:
    """The failure to report when clamd stopped reading before the stream ended."""
    reason = f"connection lost while sending ({type(exc).__name__})"
    try:
        async with deadline(_LAST_WORDS_TIMEOUT, "reply"):
            reply = await receive_reply(sock)
    except StepError:
        return StepError(reason, dead=True)
    if not reply:
        return StepError(reason, dead=True)
    lost = StepError(reason)
    if number:
        reply = session_reply(reply, number) or reply
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
