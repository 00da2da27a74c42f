"""clamd scan slots: at most `limit` scans at once, small messages first, none starved.

A plain semaphore serves waiters in arrival order, so one innocent 10 KB message queued behind
forty 10 MB ones waits for all of their scans. Here:
- a waiting scan is ranked by its arrival time plus a handicap of one second per `AGING_RATE`
  bytes: a 10 KB message overtakes 10 MB ones that arrived up to about ten seconds before it,
  and a big message that has waited longer than its handicap goes ahead of every newcomer, so
  it is never starved (and still bounded by the scanner's queue_timeout);
- messages over `BIG` bytes hold at most `limit - reserved` slots together, so that when every
  other slot is busy with long scans, a small message still starts at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

AGING_RATE = 1_000_000  # bytes of message per second of handicap
BIG = 1_000_000  # bytes; bigger scans leave `reserved` slots to the small ones


@dataclass(order=True)
class _Waiter:
    rank: float
    order: int
    big: bool = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class ScanSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        # One slot in five (at least one, none when there is only one) is for small messages.
        self.reserved = 0 if limit == 1 else max(1, limit // 5)
        self._free = limit
        self._big = 0  # slots held by big messages
        self._waiting: list[_Waiter] = []
        self._order = itertools.count()  # equal ranks: arrival order

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiting if not waiter.future.done())

    async def acquire(self, size: int) -> bool:
        """Wait for a slot for a message of `size` bytes; cancellable without losing one.
        Returns whether the slot counts as big (give it back with `release(big=...)`)."""
        big = size > BIG
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        rank = loop.time() + size / AGING_RATE
        heapq.heappush(self._waiting, _Waiter(rank, next(self._order), big, future))
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(big=big)  # granted just as the wait was cancelled: pass it on
            raise
        return big

    def take_now(self, size: int) -> bool | None:
        """A slot at once, as `acquire` would grant it, when one is free and nobody waits;
        else None (then `acquire`). Returns whether it counts as big, as `acquire` does."""
        big = size > BIG
        if self._waiting or not self._may_start(big=big):
            return None
        self._take(big=big)
        return big

    def release(self, *, big: bool) -> None:
        """Give a slot back; the best-ranked waiters that may start now start."""
        self._free += 1
        self._big -= big
        self._dispatch()

    def _dispatch(self) -> None:
        passed: list[_Waiter] = []
        while self._waiting and self._free:
            waiter = heapq.heappop(self._waiting)
            if waiter.future.done():
                continue  # cancelled while waiting
            if not self._may_start(big=waiter.big):
                passed.append(waiter)  # big, and only reserved slots are free
                continue
            self._take(big=waiter.big)
            waiter.future.set_result(None)
        for waiter in passed:
            heapq.heappush(self._waiting, waiter)

    def _may_start(self, *, big: bool) -> bool:
        if not self._free:
            return False
        return not big or self._big < self.limit - self.reserved

    def _take(self, *, big: bool) -> None:
        self._free -= 1
        self._big += big
