"""One client connection: its input in a buffer this module owns, and one-write replies.

Why an `asyncio.Protocol` and not `asyncio.StreamReader`: the pipelining check (RFC 2920
§3.1; Postfix smtpd_forbid_unauth_pipelining) asks "did the client send more before our
reply?", which is "is the buffer non-empty after this command line?". A StreamReader keeps its
buffer private (`_buffer`); here the buffer is ours, so the answer is `len(buffer) > 0`, with
no private attribute and no extra read.

Guarantees:
- memory: reading pauses while more than HIGH_WATER bytes wait unread (flow control), and a
  command line is never buffered beyond the caller's limit;
- reads raise `ClientGoneError` when the peer closes, and nothing else; the caller bounds
  each read with `asyncio.timeout` (the session's command and data timeouts);
- each `send()` is one `transport.write()`, with TCP_NODELAY set (docs/explanation/design.md);
- a client that does not read our replies cannot grow our output without bound: above
  OUTPUT_LIMIT unsent bytes the connection is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

from filterd.endpoints.net import set_nodelay

HIGH_WATER = 1 << 20  # pause reading above this many unread bytes
LOW_WATER = 1 << 18
OUTPUT_LIMIT = 1 << 20  # unsent reply bytes; replies are small, so only a stalled reader gets here


class ClientGoneError(Exception):
    """The client closed the connection (or it broke)."""


class LineTooLongError(Exception):
    """No line end within the limit; the caller discards the rest with `skip_line()`."""


class Connection(asyncio.Protocol):
    def __init__(self, on_open: Callable[[Connection], None]) -> None:
        self._on_open = on_open
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._closed = False
        self._paused = False
        self.reading = False  # a reader waits for input (tests use it to see a session idle)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's, or one that implements it without subclassing it
        # (uvloop's TCPTransport, measured in bench/README.md).
        if not (hasattr(transport, "write") and hasattr(transport, "pause_reading")):
            raise TypeError("a stream transport is needed")
        self.transport = cast("asyncio.Transport", transport)
        # Replies go out at once, not after the client's delayed ACK.
        set_nodelay(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self._on_open(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._arrived.set()
        if len(self._buffer) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._closed = True
        self._arrived.set()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._arrived.set()

    # --- reading ------------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Bytes arrived that nobody has read yet: the client did not wait for our reply."""
        return bool(self._buffer)

    async def settle(self, pause: float) -> None:
        """Let input that is already on its way arrive (the check before the greeting).

        Two loop turns let the transport deliver bytes the kernel already holds; `pause`
        waits longer, ending early if something arrives.
        """
        for _ in range(2):
            await asyncio.sleep(0)
        if pause > 0 and not self._buffer and not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):  # no task, as wait_for would start
                    await self._arrived.wait()

    async def read_line(self, limit: int) -> bytes:
        """Bytes up to and including the first LF; `LineTooLongError` after `limit` without."""
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) >= limit:
                raise LineTooLongError
            await self._wait()

    async def skip_line(self) -> None:
        """Discard input up to and including the next LF (after `LineTooLongError`)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                self._take(end + 1)
                return
            self._take(len(self._buffer))
            await self._wait()

    async def read_chunk(self, size: int) -> bytes:
        """Up to `size` bytes, as soon as any are there."""
        if not self._buffer:
            await self._wait()
        return self._take(min(size, len(self._buffer)))

    async def _wait(self) -> None:
        if self._closed:
            raise ClientGoneError
        self._arrived.clear()
        self.reading = True
        try:
            await self._arrived.wait()
        finally:
            self.reading = False
        if not self._buffer and self._closed:
            raise ClientGoneError

    def _take(self, count: int) -> bytes:
        with memoryview(self._buffer) as view:
            data = bytes(view[:count])  # one copy (a bytearray slice would make two)
        del self._buffer[:count]
        if self._paused and len(self._buffer) < LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    # --- writing ------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Reading is paused: more than HIGH_WATER bytes wait unread."""
        return self._paused

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, reply: bytes) -> None:
        """One reply, one write (one TCP segment for anything that fits in one)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply)
        if transport.get_write_buffer_size() > OUTPUT_LIMIT:
            transport.abort()  # the client stopped reading; connection_lost() follows
            self._closed = True
            self._arrived.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
