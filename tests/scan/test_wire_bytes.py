"""The bytes clamd receives stay those of the joined pieces, now that they leave gathered.

The references are the joining functions the client used before it sent views of the
content (wire.instream_request for scan(), wire.frames_of per batch for a stream): what a
fake clamd records must rebuild to exactly their bytes, for a table of sizes and cuts.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from filterd.scan import ClamdScanner, ScanResult, ScanStatus
from filterd.scan.link import StepError, Steps, send_buffers
from filterd.scan.stream import WRITE, _batch
from filterd.scan.wire import (
    CHUNK_SIZE,
    END_OF_STREAM,
    INSTREAM_COMMAND,
    Buffer,
    frame_views,
    frames_of,
    instream_request,
)

from .conftest import QUICK, StartFake, quick_pool
from .fake_clamd import Session

DEADLINE = 10.0

SIZES = [
    pytest.param(0, id="empty"),
    pytest.param(1, id="one-byte"),
    pytest.param(10_240, id="10k"),
    pytest.param(CHUNK_SIZE - 1, id="chunk-less-one"),
    pytest.param(CHUNK_SIZE, id="one-chunk"),
    pytest.param(CHUNK_SIZE + 1, id="chunk-and-one"),
    pytest.param(WRITE - 1, id="write-less-one"),
    pytest.param(WRITE, id="one-write"),
    pytest.param(WRITE + 1, id="write-and-one"),
    pytest.param(1024 * 1024 + 7, id="1m-and-7"),
]

CUTS = [
    pytest.param([], id="nothing"),
    pytest.param([10], id="one-small"),
    pytest.param([1] * 50, id="bytes"),
    pytest.param([CHUNK_SIZE], id="one-chunk"),
    pytest.param([CHUNK_SIZE - 1, 2, CHUNK_SIZE], id="across-a-chunk"),
    pytest.param([CHUNK_SIZE + 7, 3, 2 * CHUNK_SIZE], id="big-pieces"),
    pytest.param([4096] * 200, id="many-4k"),
    pytest.param([WRITE + 1, 5], id="over-one-write"),
    pytest.param([65_000] * 17, id="1m-in-reads"),
]


def content_of(size: int, salt: int = 0) -> bytes:
    return bytes((n + salt) % 251 for n in range(size))


def on_the_wire(session: Session) -> bytes:
    """The request as clamd read it: the command, then each chunk's length and bytes."""
    wire, at = bytearray(session.command), 0
    for length in session.lengths:
        wire += struct.pack("!I", length) + session.data[at : at + length]
        at += length
    return bytes(wire)


def stream_reference(chunks: list[bytes]) -> bytes:
    """What the stream sent when it joined each batch (frames_of) into one buffer."""
    pieces = [memoryview(chunk) for chunk in chunks if chunk]
    wire, sent = INSTREAM_COMMAND, 0
    while sent < len(pieces):
        batch, sent = _batch(pieces, sent)
        wire += frames_of(batch)
    return wire + END_OF_STREAM


@pytest.mark.parametrize("sizes", CUTS)
def test_frame_views_are_frames_of(sizes: list[int]) -> None:
    pieces = [memoryview(content_of(size, salt)) for salt, size in enumerate(sizes)]
    got = b"".join(frame_views(pieces))
    assert got == frames_of(pieces)


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
@pytest.mark.parametrize("size", SIZES)
async def test_scan_sends_the_joined_request(start_fake: StartFake, size: int, unix: bool) -> None:
    fake = await start_fake(unix=unix)
    content = content_of(size)
    async with asyncio.timeout(DEADLINE):
        got = await quick_pool(fake.address).scan(content)
    assert got.status is ScanStatus.CLEAN
    (session,) = fake.scans
    assert on_the_wire(session) == b"".join(instream_request(content))


async def fed_at_once(scanner: ClamdScanner, chunks: list[bytes]) -> ScanResult:
    """Feed every chunk before the sender runs: its batches are then fixed by the cuts."""
    stream = scanner.stream()
    for chunk in chunks:
        stream.feed(chunk)
    async with asyncio.timeout(DEADLINE):
        return await stream.finish()


@pytest.mark.parametrize("sizes", CUTS)
async def test_stream_sends_the_joined_batches(start_fake: StartFake, sizes: list[int]) -> None:
    fake = await start_fake()
    chunks = [content_of(size, salt) for salt, size in enumerate(sizes)]
    got = await fed_at_once(quick_pool(fake.address), chunks)
    assert got.status is ScanStatus.CLEAN
    (session,) = fake.scans
    assert on_the_wire(session) == stream_reference(chunks)


async def test_a_pause_in_the_content_is_not_a_send_timeout(start_fake: StartFake) -> None:
    """The timer of a stream's writes stops while it waits for the caller's next piece."""
    fake = await start_fake()
    stream = quick_pool(fake.address).stream()
    stream.feed(content_of(CHUNK_SIZE))  # the stream starts sending now
    await asyncio.sleep(2 * QUICK)  # longer than io_timeout
    stream.feed(content_of(10, 1))
    async with asyncio.timeout(DEADLINE):
        got = await stream.finish()
    assert got.status is ScanStatus.CLEAN
    (session,) = fake.scans
    assert bytes(session.data) == content_of(CHUNK_SIZE) + content_of(10, 1)


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([3, 0, 4], id="with-an-empty-buffer"),
        pytest.param([1024 * 1024], id="one-1m-buffer"),
        pytest.param([1] * 1500, id="more-buffers-than-one-sendmsg-takes"),
        pytest.param([CHUNK_SIZE + 3] * 20, id="partial-writes"),
    ],
)
async def test_send_buffers_writes_everything_in_order(sizes: list[int]) -> None:
    buffers: list[Buffer] = [content_of(size, salt) for salt, size in enumerate(sizes)]
    buffers[::2] = [memoryview(buffer) for buffer in buffers[::2]]
    want = b"".join(buffers)
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.setblocking(False)
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # full at once

        async def read_all() -> bytes:
            got = bytearray()
            while len(got) < len(want):
                got += await loop.sock_recv(right, 65536)
            return bytes(got)

        async with asyncio.timeout(DEADLINE):
            reader = asyncio.create_task(read_all())
            await send_buffers(left, list(buffers))
            assert await reader == want


async def run_steps(plan: list[tuple[str, float | None, float]]) -> str | None:
    """Start each (step, bound) then sleep; the reason of the step that ran out, or None."""
    steps = Steps()
    try:
        async with steps:
            for name, seconds, pause in plan:
                steps.start(name, seconds)
                await asyncio.sleep(pause)
    except TimeoutError as exc:
        failure = steps.expired(exc)
        assert isinstance(failure, StepError)
        return failure.reason
    return None


@pytest.mark.parametrize(
    ("plan", "want"),
    [
        pytest.param([("connect", 0.05, 0.0), ("send", 3.0, 0.4)], None, id="later-bound-holds"),
        pytest.param(
            [("connect", 3.0, 0.0), ("send", 0.05, 1.0)],
            "send timeout after 0.05s",
            id="sooner-bound-rearms",
        ),
        pytest.param(
            [("connect", 0.05, 0.4), ("send", 3.0, 0.0)],
            "connect timeout after 0.05s",
            id="first-bound-expires",
        ),
        pytest.param(
            [("connect", 0.05, 0.0), ("source", None, 0.4), ("send", 0.05, 1.0)],
            "send timeout after 0.05s",
            id="unbounded-wait-then-bounded",
        ),
        pytest.param(
            [("connect", 0.05, 0.0), ("source", None, 0.4)], None, id="caller-wait-unbounded"
        ),
    ],
)
async def test_steps_end_each_at_its_own_bound(
    plan: list[tuple[str, float | None, float]], want: str | None
) -> None:
    async with asyncio.timeout(DEADLINE):
        assert await run_steps(plan) == want
