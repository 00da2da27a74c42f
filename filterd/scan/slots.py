"""clamd scan slots: at most `limit` scans at once, small messages first, none starved.

A plain semaphore serves waiters in arrival order, so one innocent 10 KB message queued behind
forty 10 MB ones waits for all of their scans. Here a waiting scan is ranked by its arrival
time plus a handicap of one second per `AGING_RATE` bytes: a 10 KB message overtakes 10 MB
ones that arrived up to about ten seconds before it, and a big message that has waited longer
than its handicap goes ahead of every newcomer, so it is never starved (and still bounded by the
scanner's queue_timeout).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

AGING_RATE = 1_000_000  # bytes of message per second of handicap


class ScanSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # equal ranks: arrival order

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def queued(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    async def acquire(self, size: int) -> None:
        """Wait for a slot for a message of `size` bytes; cancellable without losing one."""
        if self._free > 0 and not self.queued:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        rank = loop.time() + size / AGING_RATE
        heapq.heappush(self._waiting, (rank, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as the wait was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the best-ranked waiter still waiting, else to the pool."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
