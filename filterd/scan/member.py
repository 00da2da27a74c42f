"""One clamd of a pool: its link, its health, its figures.

Health: a member starts out healthy (the start-up check tells otherwise). While healthy it
is PINGed (clamd(8)) every `interval` seconds. A failed PING, or a scan that lost its
connection or timed out, marks it unhealthy (an ERROR answer does not: that clamd is
alive) and starts PINGs with backoff (1 s, doubling up to `backoff_max`). The first PONG,
or a scan answered, marks it healthy again. Each change is one log line naming the
address: a warning going down, info coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from filterd.scan.link import Link, StepError
from filterd.scan.session import Sessions
from filterd.scan.wire import PING_COMMAND, VERSION_COMMAND, parse_pong, parse_version

_log = structlog.get_logger(__name__)

FIRST_BACKOFF = 1.0  # seconds before the first PING after a failure


@dataclass(frozen=True, slots=True)
class MemberStats:
    """One address's figures, for the log and for metrics (read-only copies)."""

    address: str
    healthy: bool
    busy: int  # scans on this address now
    scans: int  # scan attempts sent to it, retries included
    errors: int  # attempts that failed there (connect, lost connection, timeout, ERROR)
    last_error: str | None  # the latest failure's reason, scan or PING


class Member:
    def __init__(
        self,
        link: Link,
        *,
        interval: float,
        backoff_max: float,
        session_idle: float = 0.0,
        keep: int = 0,
    ) -> None:
        self.link = link
        self.sessions = Sessions(link, idle=session_idle, keep=keep)
        self.address = str(link.address)
        self.interval = interval
        self.backoff_max = backoff_max
        self.healthy = True
        self.busy = 0
        self.scans = 0
        self.errors = 0
        self.last_error: str | None = None
        self._backoff = FIRST_BACKOFF
        self._wake = asyncio.Event()

    def stats(self) -> MemberStats:
        return MemberStats(
            self.address, self.healthy, self.busy, self.scans, self.errors, self.last_error
        )

    async def ping(self) -> str | None:
        """None on PONG, else why not. Bounded by the connect and io timeouts."""
        try:
            return parse_pong(await self.link.command(PING_COMMAND))
        except StepError as failure:
            return failure.reason

    async def version(self) -> tuple[str | None, str | None]:
        """(clamd's version line, None) or (None, why not)."""
        try:
            return parse_version(await self.link.command(VERSION_COMMAND))
        except StepError as failure:
            return None, failure.reason

    def scan_failed(self, reason: str, *, lost: bool) -> None:
        """A scan attempt failed here; `lost`: the connection, so the clamd looks down."""
        self.errors += 1
        self.last_error = reason
        if lost:
            self._down(reason, via="scan")
            self._wake.set()  # check again soon, not after a whole interval

    def mark_down(self, reason: str) -> None:
        """Unhealthy, without a log line (the start-up check writes its own)."""
        self.healthy = False
        self.last_error = reason

    def answered(self) -> None:
        self._up(via="scan")

    async def watch(self) -> None:
        """PING for ever: every `interval` while healthy, with backoff while not."""
        while True:
            problem = await self.ping()
            if problem is None:
                self._up(via="PING")
                pause = self.interval
            else:
                self._down(problem, via="PING")
                pause = self._backoff
                self._backoff = min(self._backoff * 2, self.backoff_max)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    def _down(self, reason: str, *, via: str) -> None:
        self.last_error = reason
        if self.healthy:
            self.healthy = False
            self._backoff = FIRST_BACKOFF
            _log.warning(
                "clamd unhealthy",
                address=self.address,
                error=reason,
                via=via,
                scans=self.scans,
                errors=self.errors,
            )

    def _up(self, *, via: str) -> None:
        if not self.healthy:
            self.healthy = True
            _log.info(
                "clamd healthy again",
                address=self.address,
                via=via,
                scans=self.scans,
                errors=self.errors,
            )
