"""Streams still arriving never take the slots kept for messages that have ended.

A stream asks for its slot at its first 64 KiB and holds it while the rest arrives, at the
sender's pace (down to [proxy] min_data_rate). Without a bound, as many slow senders as
there are slots would leave every other message "scanner busy".
"""

from __future__ import annotations

import asyncio

from filterd.scan import ScanStatus
from filterd.scan.stream import START_AT

from .conftest import StartFake, quick_pool


async def test_slow_streams_leave_the_reserved_slots(start_fake: StartFake) -> None:
    fake = await start_fake()
    scanner = quick_pool(fake.address, max_concurrent=5, queue_timeout=2.0)
    assert scanner.slots.reserved == 1
    slow = [scanner.stream() for _ in range(5)]
    for stream in slow:
        stream.feed(b"s" * START_AT)  # each asks for a slot, and its sender goes quiet
    async with asyncio.timeout(5):
        while scanner.slots.in_use < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert (scanner.slots.in_use, scanner.slots.queued) == (4, 1)
        small = await scanner.scan(b"an innocent message\r\n")
        assert small.status is ScanStatus.CLEAN, "a message that has ended still gets a slot"
    for stream in slow:
        stream.abort()
    async with asyncio.timeout(5):
        while scanner.slots.in_use:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_small_stream_at_finish_is_not_big(start_fake: StartFake) -> None:
    fake = await start_fake()
    scanner = quick_pool(fake.address, max_concurrent=5)
    hold = [scanner.stream() for _ in range(4)]
    for stream in hold:
        stream.feed(b"h" * START_AT)
    async with asyncio.timeout(5):
        while scanner.slots.in_use < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        stream = scanner.stream()
        stream.feed(b"a small message\r\n")
        got = await stream.finish()  # the reserved slot: it has ended, and it is small
    assert got.status is ScanStatus.CLEAN
    for one in hold:
        one.abort()
