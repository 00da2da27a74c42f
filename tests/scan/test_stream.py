"""ClamdScanner.stream() against fake clamd: framing, slot timing, oversize, abort, replay."""

from __future__ import annotations

import asyncio

import pytest

from filterd.scan import ClamdScanner, ScanResult, ScanStatus
from filterd.scan.stream import START_AT
from filterd.scan.wire import CHUNK_SIZE

from .conftest import StartFake, quick_pool
from .fake_clamd import Mode

DEADLINE = 10.0


async def streamed(scanner: ClamdScanner, chunks: list[bytes]) -> ScanResult:
    stream = scanner.stream()
    async with asyncio.timeout(DEADLINE):
        for chunk in chunks:
            stream.feed(chunk)
            await asyncio.sleep(0)  # let the sender run between chunks, as a socket read does
        return await stream.finish()


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([], id="empty"),
        pytest.param([10], id="one-small"),
        pytest.param([1] * 50, id="bytes"),
        pytest.param([CHUNK_SIZE + 7, 3, 2 * CHUNK_SIZE], id="big-pieces"),
        pytest.param([4096] * 200, id="many-4k"),
    ],
)
async def test_content_on_the_wire_is_what_was_fed(start_fake: StartFake, sizes: list[int]) -> None:
    fake = await start_fake()
    chunks = [bytes((i + n) % 251 for n in range(size)) for i, size in enumerate(sizes)]
    got = await streamed(quick_pool(fake.address), chunks)
    assert got.status is ScanStatus.CLEAN
    (session,) = fake.scans
    assert session.command == b"zINSTREAM\0"
    assert bytes(session.data) == b"".join(chunks)
    assert all(0 < n <= CHUNK_SIZE for n in session.lengths[:-1])
    assert session.lengths[-1] == 0


async def test_infected_answer_comes_through(start_fake: StartFake) -> None:
    fake = await start_fake(reply=b"stream: Fake.Sig FOUND\0")
    got = await streamed(quick_pool(fake.address), [b"a" * 100_000, b"b"])
    assert (got.status, got.virus) == (ScanStatus.INFECTED, "Fake.Sig")


async def test_a_big_stream_is_sent_before_finish(start_fake: StartFake) -> None:
    fake = await start_fake()
    stream = quick_pool(fake.address).stream()
    stream.feed(b"x" * START_AT)
    async with asyncio.timeout(DEADLINE):
        while not (fake.scans and len(fake.scans[0].data) == START_AT):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert not fake.scans[0].ended
        got = await stream.finish()
    assert got.status is ScanStatus.CLEAN


async def test_a_small_stream_waits_for_finish(start_fake: StartFake) -> None:
    fake = await start_fake()
    stream = quick_pool(fake.address).stream()
    stream.feed(b"x" * (START_AT - 1))
    await asyncio.sleep(0.1)
    assert fake.sessions == []  # no slot taken, nothing sent
    async with asyncio.timeout(DEADLINE):
        assert (await stream.finish()).status is ScanStatus.CLEAN


async def test_oversize_stops_sending_and_frees_the_slot(start_fake: StartFake) -> None:
    fake = await start_fake()
    scanner = quick_pool(fake.address, max_scan_size=200_000, max_concurrent=1)
    stream = scanner.stream()
    stream.feed(b"x" * 150_000)
    await asyncio.sleep(0.1)
    stream.feed(b"x" * 60_000)  # over the limit
    async with asyncio.timeout(DEADLINE):
        got = await stream.finish()
        assert got.status is ScanStatus.OVERSIZE
        assert got.reason == "210000 bytes exceed max_scan_size 200000"
        assert (await scanner.scan(b"next")).status is ScanStatus.CLEAN  # the slot is free
    assert not fake.scans[0].ended  # the oversize stream was never completed
    assert len(fake.scans[0].data) <= 150_000


async def test_abort_frees_the_slot(start_fake: StartFake) -> None:
    fake = await start_fake()
    scanner = quick_pool(fake.address, max_concurrent=1)
    stream = scanner.stream()
    stream.feed(b"x" * START_AT)
    await asyncio.sleep(0.1)
    assert scanner.slots.in_use == 1
    stream.abort()
    async with asyncio.timeout(DEADLINE):
        assert (await scanner.scan(b"next")).status is ScanStatus.CLEAN
    assert scanner.slots.in_use == 0


async def test_size_hint_ranks_the_stream(start_fake: StartFake) -> None:
    """A stream announced big waits behind a small scan that came later."""
    fake = await start_fake(delay=0.4)
    scanner = quick_pool(
        fake.address, max_concurrent=1, queue_timeout=DEADLINE, reply_timeout=DEADLINE
    )
    blocker = asyncio.create_task(scanner.scan(b"first"))
    await asyncio.sleep(0.02)
    stream = scanner.stream(size_hint=50_000_000)
    stream.feed(b"x" * START_AT)
    # Later than the 64 KiB stream's own handicap (0.065 s): without the hint it would win.
    await asyncio.sleep(0.15)
    small = asyncio.create_task(scanner.scan(b"small"))
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(blocker, small, stream.finish())
    assert [bytes(s.data[:5]) for s in fake.scans] == [b"first", b"small", b"xxxxx"]


async def test_a_failed_member_is_replayed_on_another(start_fake: StartFake) -> None:
    broken = await start_fake(Mode.CLOSE_MID_STREAM)
    good = await start_fake()
    scanner = quick_pool(broken.address, good.address)
    chunks = [bytes([i]) * 50_000 for i in range(8)]
    got = await streamed(scanner, chunks)
    assert got.status is ScanStatus.CLEAN
    assert bytes(good.scans[0].data) == b"".join(chunks)
    assert scanner.stats()[0].errors == 1


async def test_finish_is_bounded_by_the_deadline(start_fake: StartFake) -> None:
    hung = await start_fake(Mode.STALL)
    scanner = quick_pool(hung.address, reply_timeout=5.0, deadline=0.2)
    got = await streamed(scanner, [b"x" * 100])
    assert got.reason == "scan deadline 0.2s passed"
    assert got.elapsed < 1.0


async def test_every_member_down_is_error() -> None:
    got = await streamed(quick_pool("tcp:127.0.0.1:1"), [b"x" * 100])
    assert got.status is ScanStatus.ERROR


async def test_feed_after_finish_is_a_bug(start_fake: StartFake) -> None:
    fake = await start_fake()
    stream = quick_pool(fake.address).stream()
    await stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed(b"late")
