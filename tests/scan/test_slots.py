"""Scan slots: small messages overtake big ones, big ones are not starved, nothing leaks."""

from __future__ import annotations

import asyncio

import pytest

from filterd.scan import slots as slots_module
from filterd.scan.slots import ScanSlots


async def started_order(slots: ScanSlots, sizes: list[int], pause: float = 0.0) -> list[int]:
    """Hold the one slot, queue a scan per size (`pause` apart), release: who goes first."""
    order: list[int] = []

    async def scan(size: int) -> None:
        big = await slots.acquire(size)
        order.append(size)
        await asyncio.sleep(0)
        slots.release(big=big)

    await slots.acquire(0)
    tasks = []
    for size in sizes:
        tasks.append(asyncio.create_task(scan(size)))
        await asyncio.sleep(pause)
    await asyncio.sleep(0)
    slots.release(big=False)
    await asyncio.gather(*tasks)
    return order


@pytest.mark.parametrize(
    ("sizes", "pause", "want"),
    [
        ([10_000_000, 10_000_000, 10_000], 0.0, [10_000, 10_000_000, 10_000_000]),
        ([5_000, 5_000_000, 50_000], 0.0, [5_000, 50_000, 5_000_000]),
        ([1_000, 2_000, 3_000], 0.0, [1_000, 2_000, 3_000]),
    ],
    ids=["small-overtakes-big", "by-size", "equal-rank-by-arrival"],
)
async def test_waiting_scans_start_small_first(
    sizes: list[int], pause: float, want: list[int]
) -> None:
    assert await started_order(ScanSlots(1), sizes, pause) == want


async def test_a_big_scan_that_waited_longer_than_its_handicap_goes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slots_module, "AGING_RATE", 100_000_000)  # 10 MB: 0.1 s of handicap
    got = await started_order(ScanSlots(1), [10_000_000, 10_000], pause=0.2)
    assert got == [10_000_000, 10_000]


async def test_a_cancelled_wait_loses_no_slot() -> None:
    slots = ScanSlots(1)
    await slots.acquire(0)
    waiter = asyncio.create_task(slots.acquire(10))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release(big=False)
    assert slots.in_use == 0
    assert slots.queued == 0


async def test_a_slot_granted_to_a_wait_cancelled_at_once_is_passed_on() -> None:
    slots = ScanSlots(1)
    await slots.acquire(0)
    first = asyncio.create_task(slots.acquire(10))
    second = asyncio.create_task(slots.acquire(20))
    await asyncio.sleep(0)
    slots.release(big=False)  # granted to `first`, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1.0)  # the slot went on to `second`
    assert slots.in_use == 1
    slots.release(big=False)
    assert slots.in_use == 0


async def test_big_scans_leave_a_slot_for_small_ones() -> None:
    slots = ScanSlots(5)  # one reserved
    bigs = [await slots.acquire(10_000_000) for _ in range(4)]
    assert all(bigs)
    fifth_big = asyncio.create_task(slots.acquire(10_000_000))
    await asyncio.sleep(0)
    assert not fifth_big.done(), "the last slot is for small messages"
    assert await asyncio.wait_for(slots.acquire(10_000), 1.0) is False  # starts at once
    slots.release(big=False)  # the small one is done: still only the reserved slot is free
    await asyncio.sleep(0)
    assert not fifth_big.done()
    slots.release(big=True)  # a big one is done: the waiting big one starts
    assert await asyncio.wait_for(fifth_big, 1.0) is True
    for _ in range(4):
        slots.release(big=True)
    assert slots.in_use == 0


def test_reserved_slots() -> None:
    assert [ScanSlots(n).reserved for n in (1, 2, 5, 10, 20)] == [0, 1, 1, 2, 4]
