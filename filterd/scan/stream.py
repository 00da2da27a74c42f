"""A scan fed while the message arrives, so that the verdict comes soon after the final dot.

Rules:
- `feed(chunk)` never blocks and never copies: the stream keeps a reference to each chunk
  (the caller must not change it afterwards) and a background task sends them in zINSTREAM
  chunks (wire.py) as they come.
- The slot (slots.py) is asked for once the stream holds a whole INSTREAM chunk (64 KiB),
  or at `finish()` for a smaller message, ranked by the larger of `size_hint` and the bytes
  fed so far. So a message under 64 KiB queues exactly as `scan()` would, and a big one
  starts sending early. A slot asked for before `finish()` counts as big (over slots.BIG)
  whatever the size: it is held while the rest arrives, at the sender's pace, so streams
  still arriving never hold the slots slots.py reserves for the others.
- Over `max_scan_size` the stream stops: nothing more is sent, the connection and the slot
  are let go at once, and `finish()` answers OVERSIZE.
- If a clamd fails while the stream is under way, the pool sends it again to another from
  the first byte: the stream holds every chunk until `finish()` or `abort()`.
- `finish()` never raises (cancellation aside) and waits at most the pool's `deadline`;
  the result's `elapsed` counts from `finish()`. `abort()` releases everything; the caller
  must call one of the two, which is what bounds the wait for more content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from filterd.scan.result import ScanResult
from filterd.scan.slots import BIG
from filterd.scan.wire import CHUNK_SIZE, END_OF_STREAM, INSTREAM_COMMAND, Buffer, frame_views

if TYPE_CHECKING:
    from filterd.scan.clamd import ClamdScanner

# The request, in groups of buffers: each group one gathered write (link.send_buffers).
Source = Callable[[], AsyncIterator[list[Buffer]]]

# The stream asks for its slot once it holds this much (one whole INSTREAM chunk).
START_AT = CHUNK_SIZE
# About this much content goes into one write, each write bounded by io_timeout (whole
# chunks: scan() cuts its content at multiples of it).
WRITE = 4 * CHUNK_SIZE
_BATCH = WRITE


class ClamdStream:
    def __init__(self, scanner: ClamdScanner, size_hint: int = 0) -> None:
        self._scanner = scanner
        self._size_hint = max(0, size_hint)
        self._pieces: list[memoryview] = []
        self._size = 0
        self._more = asyncio.Event()
        self._finished = False
        self._stopped: ScanResult | None = None  # OVERSIZE, or ERROR once aborted
        self._task: asyncio.Task[ScanResult] | None = None

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def feed(self, chunk: bytes) -> None:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if self._stopped is not None or not chunk:
            return
        self._size += len(chunk)
        if self._size > self._scanner.max_scan_size:
            self._stop(self._scanner.oversize(self._size))
            return
        self._pieces.append(memoryview(chunk))
        self._more.set()
        if self._task is None and self._size >= START_AT:
            self._start()

    async def finish(self) -> ScanResult:
        began = time.monotonic()
        self._finished = True
        self._more.set()
        if self._stopped is not None:
            return dataclasses.replace(self._stopped, elapsed=time.monotonic() - began)
        task = self._start() if self._task is None else self._task
        try:
            async with asyncio.timeout(self._scanner.deadline):
                result = await task
        except TimeoutError:
            result = self._scanner.deadline_passed()
        finally:
            self._pieces = []
        return dataclasses.replace(result, elapsed=time.monotonic() - began)

    def abort(self) -> None:
        """Give up: close the connection, give the slot back, drop the chunks."""
        self._stop(ScanResult.error("scan aborted"))

    def _start(self) -> asyncio.Task[ScanResult]:
        size = max(self._size_hint, self._size)
        if not self._finished:
            # Still arriving, perhaps at a slow sender's pace: the slot is held for the
            # whole transfer, so it counts as big and the reserved slots stay free for
            # messages that have ended (slots.py). Ten slow senders cannot take them all.
            size = max(size, BIG + 1)
        self._task = asyncio.get_running_loop().create_task(self._scanner.run(size, self._send))
        return self._task

    def _stop(self, result: ScanResult) -> None:
        self._stopped = result
        self._pieces = []
        if self._task is not None:
            self._task.cancel()  # its finally gives the slot back and closes the socket

    async def _send(self) -> AsyncIterator[list[Buffer]]:
        """The whole request from the first byte: each attempt of the pool starts one.
        The same bytes as when each batch was joined (wire.frames_of), without the copies."""
        first = True
        sent = 0
        while True:
            pieces = self._pieces
            if sent < len(pieces):
                batch, sent = _batch(pieces, sent)
                last = self._finished and sent == len(pieces)
                group = frame_views(batch)
                if first:
                    group.insert(0, INSTREAM_COMMAND)
                if last:
                    group.append(END_OF_STREAM)
                yield group
                first = False
                if last:
                    return
            elif self._finished:
                yield [INSTREAM_COMMAND, END_OF_STREAM] if first else [END_OF_STREAM]
                return
            else:
                self._more.clear()
                await self._more.wait()


def _batch(pieces: list[memoryview], start: int) -> tuple[list[memoryview], int]:
    """Pieces from `start` up to about _BATCH bytes, and where the next batch starts."""
    end, total = start, 0
    while end < len(pieces) and total < _BATCH:
        total += len(pieces[end])
        end += 1
    return pieces[start:end], end
