"""Idle sessions with the reinjection smtpd, kept for the next transaction (one pool a worker).

Postfix's before-filter smtpd opens one proxy session per mail transaction
(SMTPD_PROXY_README), so without a pool every message costs filterd a connect, greeting,
EHLO and QUIT downstream, and the reinjection smtpd a whole session set-up and teardown.
The pool keeps the downstream session of a transaction that ended cleanly and lends it to
the next transaction, of whichever client (docs/explanation/proxy.md, "Reusing downstream
sessions", says why that is safe with XFORWARD).

Guarantees:
- only the session says a transaction ended cleanly (`release`): its final dot answered 2XX
  and nothing else refused or pending; every other end closes the connection, as without
  a pool;
- an idle session is closed after `idle_time` seconds (QUIT, not waiting for the 221);
- a session carries at most `max_transactions`; the pool marks the last one so that its
  final dot goes with QUIT pipelined, as without a pool;
- at most `size` sessions idle; a session released beyond that is closed;
- a session the smtpd closed while it was idle is skipped at `acquire`; one that turns out
  dead only when used is the caller's to replace (session.py, before the reply to MAIL);
- `close()` (shutdown, reload) closes the idle sessions; one in use is closed when released;
- with any bound 0 nothing is kept: each transaction gets a new session, closed after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from filterd.config import ProxySettings
from filterd.endpoints.proxy.downstream import NextHop

Opener = Callable[[], Awaitable[NextHop]]  # a new session to the one next hop, EHLO done


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much the pool keeps ([proxy] downstream_pool_size, _idle_time, _max_messages)."""

    size: int = 0  # idle sessions at most
    idle_time: float = 0.0  # seconds a session may stay idle
    max_transactions: int = 0  # transactions per session

    @classmethod
    def of(cls, settings: ProxySettings) -> Bounds:
        return cls(
            settings.downstream_pool_size,
            settings.downstream_idle_time,
            settings.downstream_max_messages,
        )

    @property
    def reuse(self) -> bool:
        return self.size > 0 and self.idle_time > 0 and self.max_transactions > 1


NO_REUSE = Bounds()


@dataclass(frozen=True, slots=True)
class Lease:
    """A downstream session lent for one transaction."""

    hop: NextHop
    uses: int  # transactions on this session, this one included

    @property
    def reused(self) -> bool:
        """It carried a transaction before (it may have died while idle)."""
        return self.uses > 1


@dataclass(slots=True)
class _Idle:
    hop: NextHop
    uses: int
    timer: asyncio.TimerHandle


class DownstreamPool:
    """Sessions to one next hop with one EHLO name; a new pool when either changes (reload)."""

    def __init__(self, opener: Opener, bounds: Bounds = NO_REUSE) -> None:
        self.opener = opener
        self.bounds = bounds
        self.idle: list[_Idle] = []  # the most recently released last: it is lent first
        self.closed = False
        self.opened = 0  # connections opened (for tests and the bench)

    async def acquire(self, *, fresh: bool = False) -> Lease:
        """A session for a new transaction: an idle one unless `fresh`, else a new one
        (DownstreamError if it cannot be opened)."""
        while self.idle and not fresh:
            entry = self.idle.pop()
            entry.timer.cancel()
            if entry.hop.closed:
                entry.hop.abort()
                continue
            return self._lend(entry.hop, entry.uses + 1)
        hop = await self.opener()
        self.opened += 1
        return self._lend(hop, 1)

    def _lend(self, hop: NextHop, uses: int) -> Lease:
        # The last transaction the session may carry ends with QUIT after its dot.
        bounds = self.bounds
        hop.reuse = bounds.reuse and not self.closed and uses < bounds.max_transactions
        return Lease(hop, uses)

    def release(self, lease: Lease) -> bool:
        """Keep the session of a transaction that ended cleanly; False: the caller closes it."""
        hop = lease.hop
        if not hop.reuse or self.closed or hop.closed or len(self.idle) >= self.bounds.size:
            return False
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.bounds.idle_time, self._expire, hop)
        self.idle.append(_Idle(hop, lease.uses, timer))
        return True

    def _expire(self, hop: NextHop) -> None:
        for index, entry in enumerate(self.idle):
            if entry.hop is hop:
                del self.idle[index]
                hop.goodbye()
                return

    def close(self) -> None:
        """Close the idle sessions; sessions in use are closed when they come back."""
        self.closed = True
        idle, self.idle = self.idle, []
        for entry in idle:
            entry.timer.cancel()
            entry.hop.goodbye()
