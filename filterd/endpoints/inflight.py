"""Sessions in flight over all workers, so `[proxy]` / `[milter] max_connections` and the
proxy's stress rule count the whole filterd, not one worker.

The kernel spreads new connections over the workers' SO_REUSEPORT listeners by a hash of the
addresses, not by load (socket(7)), so a slower worker accumulates sessions: with the limit
divided, it answered 421 4.7.0 while the other was half empty. Instead the parent creates,
before it forks, one anonymous shared-memory array (`multiprocessing.RawArray`, inherited by
every worker) with one counter per worker and endpoint. A worker writes only its own
counters (one writer per slot: no lock), after each session it adds or ends; admission and
stress read the sum of the endpoint's counters against the whole setting. The parent zeroes
a dead worker's counters before it starts its replacement (the dead one's sessions are gone
with it).

Guarantee: a worker admits a session only when the sum it reads is below max_connections.
Workers that admit at the same instant each read the sum before the others have written,
so the total in flight may exceed max_connections by at most `workers - 1` sessions; it
never exceeds it by more, and never refuses below it except for sessions another worker is
closing at that instant.

One worker (`[server] workers = 1`, or any process that has not joined a shared array) has
no array: the count is its own sessions, exactly as before.
"""

from __future__ import annotations

import ctypes
from multiprocessing.sharedctypes import RawArray

ENDPOINTS = ("proxy", "milter")  # the endpoint sections that count sessions


class Counts:
    """The parent's array: one in-flight count per (worker, endpoint)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.array = RawArray(ctypes.c_int64, workers * len(ENDPOINTS))

    def position(self, index: int, endpoint: str) -> int:
        return index * len(ENDPOINTS) + ENDPOINTS.index(endpoint)

    def write(self, index: int, endpoint: str, count: int) -> None:
        """Worker `index`'s own sessions of `endpoint` (written only by that worker)."""
        self.array[self.position(index, endpoint)] = count

    def total(self, endpoint: str) -> int:
        """The sessions of `endpoint` in flight over every worker."""
        return sum(self.array[self.position(index, endpoint)] for index in range(self.workers))

    def clear(self, index: int) -> None:
        """A worker died: its sessions died with it (the parent, before the restart)."""
        for endpoint in ENDPOINTS:
            self.write(index, endpoint, 0)


class InFlight:
    """What one endpoint of this process reads and writes: its own sessions, and the total."""

    def __init__(self, endpoint: str, shared: Counts | None = None, index: int = 0) -> None:
        self.endpoint = endpoint
        self.shared = shared
        self.index = index

    def publish(self, own: int) -> None:
        """This worker now has `own` sessions of the endpoint (after one opened or ended)."""
        if self.shared is not None:
            self.shared.write(self.index, self.endpoint, own)

    def total(self, own: int) -> int:
        """Sessions in flight over all workers; `own` alone when there is no shared array."""
        if self.shared is None:
            return own
        return self.shared.total(self.endpoint)

    def full(self, own: int, limit: int) -> bool:
        """No room for one more session under `limit` (the whole max_connections)."""
        return self.total(own) >= limit


# The worker's place in the parent's array, set once in the forked worker before serve()
# builds its endpoints: a process is one worker, so this is the process's, not a session's.
_joined: tuple[Counts, int] | None = None


def join(shared: Counts, index: int) -> None:
    """In a forked worker: count this process's sessions in `shared`, slot `index`."""
    global _joined  # noqa: PLW0603 (one per process, set once after fork)
    _joined = (shared, index)


def in_flight(endpoint: str) -> InFlight:
    """The counter an endpoint of this process uses (its own sessions when not a worker)."""
    if _joined is None:
        return InFlight(endpoint)
    shared, index = _joined
    return InFlight(endpoint, shared, index)
