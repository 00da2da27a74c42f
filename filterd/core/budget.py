"""A bound on the message content that all transactions together hold in memory.

Every transaction of one process reserves the bytes it buffers (content kept, bytes not yet
processed, bytes after the end of data) from one `ContentBudget` as they grow, and gives them
back as they shrink and when it is closed. A reservation that does not fit is refused: the
transaction then drops its content and ends with 452 4.3.1 (`TEMPFAIL_INSUFFICIENT_RESOURCES`),
so the sender retries later, instead of the process growing until the kernel kills it.

Sans-I/O and single-threaded: it is used from one event loop, so it takes no lock.
"""

from __future__ import annotations

from filterd.core.errors import PolicyError


class ContentBudget:
    __slots__ = ("_in_use", "_limit")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            msg = f"content budget must be positive, not {limit}"
            raise PolicyError(msg)
        self._limit = limit
        self._in_use = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def exhausted(self) -> bool:
        """Nothing more can be reserved."""
        return self._in_use >= self._limit

    def reserve(self, n: int) -> bool:
        """Take `n` bytes if they fit (True); otherwise take nothing (False)."""
        if n < 0:
            msg = f"cannot reserve {n} bytes"
            raise PolicyError(msg)
        if self._in_use + n > self._limit:
            return False
        self._in_use += n
        return True

    def release(self, n: int) -> None:
        """Give back `n` bytes reserved before."""
        if not 0 <= n <= self._in_use:
            msg = f"cannot release {n} bytes: {self._in_use} in use"
            raise PolicyError(msg)
        self._in_use -= n
