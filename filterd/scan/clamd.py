"""Scan mail with one clamd or a pool of them, over the INSTREAM command, asynchronously.

Guarantees:
- `scan()` and a stream's `finish()` return CLEAN only when a clamd answered `stream: OK`
  after the whole content. Any failure (refused, reset, broken pipe, timeout, garbage,
  silence, a bug here) is ERROR with a short reason; nothing but cancellation escapes.
- Every wait is bounded: the queue for a free slot, the connect, each write, the reply, and
  the whole scan, retries included (`deadline`, counted from the end of the content).
- Content larger than `max_scan_size` is never sent; the result is OVERSIZE. Keep
  `max_scan_size` at or below clamd's StreamMaxLength (clamd.conf(5)), or clamd cuts
  the stream off with `INSTREAM size limit exceeded` and the result is ERROR.
- At most `max_concurrent` scans per address are open at once (slots.py orders the queue).
  clamd runs at most MaxThreads scans (clamd.conf(5), default 10) and queues the rest;
  queueing here instead keeps the reply timeout honest.

The pool: a scan goes to the healthy address with the fewest scans in flight. When it fails
there (connect error, lost connection, timeout, an empty, cut-off or unreadable reply, or
clamd's own ERROR), it is sent again, whole, to an address not tried yet, healthy ones
first, until one answers or the deadline passes. OK and FOUND are final, and OVERSIZE is
decided before anything is sent. Measured: clamd 1.4.6 stopped with SIGTERM mid-stream
answers `PROTOCOL ERROR: ancillary data sent without FILDES. ERROR`, which another clamd
does not.
Health checks: member.py. Why not the `clamd` package: docs/explanation/scanner.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence

import structlog

from filterd.scan.address import ClamdAddress, parse_address
from filterd.scan.link import Link, StepError, Timeouts
from filterd.scan.member import Member, MemberStats
from filterd.scan.result import MAX_TEXT_LENGTH, ScanResult, ScanStatus
from filterd.scan.slots import ScanSlots
from filterd.scan.stream import WRITE, ClamdStream, Source
from filterd.scan.wire import (
    CHUNK_SIZE,
    END_OF_STREAM,
    INSTREAM_COMMAND,
    Buffer,
    frame_views,
    instream_request,
)

# clamd.conf(5): StreamMaxLength defaults to 25M (25 MiB).
DEFAULT_MAX_SCAN_SIZE = 25 * 1024 * 1024
# clamd.conf(5): MaxThreads defaults to 10.
DEFAULT_MAX_CONCURRENT = 10
# The other defaults are filterd's own; [clamd] in the configuration (filterd/config.py)
# takes every default from here.
DEFAULT_CONNECT_TIMEOUT = 5.0  # to clamd's socket: a local daemon answers at once
DEFAULT_IO_TIMEOUT = 10.0  # each write of the stream
DEFAULT_REPLY_TIMEOUT = 60.0  # end of the stream to the verdict: a big message takes a while
DEFAULT_QUEUE_TIMEOUT = 15.0  # waiting for a free scan slot, then "scanner busy"
# The whole scan, queue and retries included: below the proxy's reply_deadline (90 s), so the
# client hears our 451 before Postfix gives up on us.
DEFAULT_DEADLINE = 80.0
DEFAULT_HEALTH_INTERVAL = 5.0  # seconds between PINGs to a healthy clamd
DEFAULT_HEALTH_BACKOFF_MAX = 30.0  # longest pause between PINGs to a failed clamd
# Seconds an open zIDSESSION connection waits for the next scan (session.py): well under
# clamd's ReadTimeout (clamd.conf(5), default 120), after which clamd closes an idle session
# (measured, clamd 1.4.6; IdleTimeout is about clamd's threads, not connections). The
# configuration's default; a scanner built without it keeps one connection per scan (0).
DEFAULT_SESSION_IDLE = 10.0
# The start-up check of one address: a hung clamd must not hold up the listeners for long.
CHECK_TIMEOUT = 3.0

_log = structlog.get_logger(__name__)


class ClamdScanner:
    """A `Scanner` backed by one clamd or a pool; one connection per scan attempt, or with
    `session_idle`, zIDSESSION connections kept open between scans (session.py)."""

    # Keyword-only settings, one per configuration key: a settings object would only
    # repeat them.
    def __init__(  # noqa: PLR0913
        self,
        address: str | ClamdAddress | Sequence[str | ClamdAddress],
        *,
        max_scan_size: int = DEFAULT_MAX_SCAN_SIZE,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        health_backoff_max: float = DEFAULT_HEALTH_BACKOFF_MAX,
        session_idle: float = 0.0,
    ) -> None:
        _require_positive(
            max_scan_size=max_scan_size,
            max_concurrent=max_concurrent,
            connect_timeout=connect_timeout,
            io_timeout=io_timeout,
            reply_timeout=reply_timeout,
            queue_timeout=queue_timeout,
            deadline=deadline,
            health_interval=health_interval,
            health_backoff_max=health_backoff_max,
        )
        if not session_idle >= 0:
            raise ValueError(f"session_idle must be 0 or more, not {session_idle!r}")
        timeouts = Timeouts(connect_timeout, io_timeout, reply_timeout)
        self.members = [
            Member(
                Link(where, timeouts),
                interval=health_interval,
                backoff_max=health_backoff_max,
                session_idle=session_idle,
                keep=max_concurrent,  # as many as may be in flight at once
            )
            for where in _addresses(address)
        ]
        self.max_scan_size = max_scan_size
        self.queue_timeout = queue_timeout
        self.deadline = deadline
        # Small messages first, none starved; max_concurrent is per clamd (its MaxThreads).
        self._slots = ScanSlots(max_concurrent * len(self.members))
        self._watchers: list[asyncio.Task[None]] = []

    def stats(self) -> list[MemberStats]:
        """Per-address figures, one entry per configured address, in configuration order."""
        return [member.stats() for member in self.members]

    @property
    def slots(self) -> ScanSlots:
        """The scan slots (in_use, queued) for metrics; read them, do not acquire."""
        return self._slots

    async def scan(self, content: bytes) -> ScanResult:
        started = time.monotonic()
        if len(content) > self.max_scan_size:
            return self.oversize(len(content), _since(started))
        try:
            async with asyncio.timeout(self.deadline):
                result = await self.run(len(content), lambda: _pieces(content))
        except TimeoutError:
            return self.deadline_passed()
        return dataclasses.replace(result, elapsed=_since(started))

    def stream(self, size_hint: int = 0) -> ClamdStream:
        """A scan fed while the message arrives (stream.py)."""
        return ClamdStream(self, size_hint)

    def oversize(self, size: int, elapsed: float = 0.0) -> ScanResult:
        reason = f"{size} bytes exceed max_scan_size {self.max_scan_size}"
        return ScanResult.oversize(reason, elapsed)

    def deadline_passed(self) -> ScanResult:
        return ScanResult.error(f"scan deadline {self.deadline:g}s passed")

    async def run(self, size: int, source: Source) -> ScanResult:
        """Take a slot for `size` bytes, then send `source()` until a clamd answers."""
        big = self._slots.take_now(size)  # a free slot and nobody waiting: no timer, no wait
        if big is None:
            try:
                async with asyncio.timeout(self.queue_timeout):
                    big = await self._slots.acquire(size)
            except TimeoutError:
                # clamd is slow or stuck; waiting longer would only pile up sessions.
                return ScanResult.error("scanner busy")
        try:
            return await self._attempts(source)
        except Exception as exc:
            # A bug here must not let mail through unscanned: report it and move on.
            _log.exception("clamd scan failed unexpectedly")
            return ScanResult.error(f"internal error ({type(exc).__name__})")
        finally:
            self._slots.release(big=big)

    async def _attempts(self, source: Source) -> ScanResult:
        tried: list[Member] = []
        last = "no clamd address"
        while (member := self._pick(tried)) is not None:
            tried.append(member)
            result, lost = await self._attempt(member, source)
            if result.status is not ScanStatus.ERROR:
                member.answered()
                return dataclasses.replace(result, address=member.address)
            last = result.reason or "error"
            member.scan_failed(last, lost=lost)
            more = self._pick(tried) is not None
            _log.warning("clamd scan failed", address=member.address, error=last, retry=more)
        failed = ScanResult.error(self._failed_everywhere(tried, last))
        return dataclasses.replace(failed, address=tried[-1].address) if tried else failed

    async def _attempt(self, member: Member, source: Source) -> tuple[ScanResult, bool]:
        """One try on `member`: its result, and whether the connection was lost."""
        member.busy += 1
        member.scans += 1
        try:
            return await member.sessions.scan(source), False
        except StepError as failure:
            return ScanResult.error(failure.reason), failure.lost
        finally:
            member.busy -= 1

    def _pick(self, tried: list[Member]) -> Member | None:
        """The least busy healthy member not tried yet; else any not tried yet."""
        left = [member for member in self.members if member not in tried]
        if not left:
            return None
        return min(left, key=lambda member: (not member.healthy, member.busy, member.scans))

    def _failed_everywhere(self, tried: list[Member], last: str) -> str:
        if len(tried) == 1:
            return last  # one clamd: its own reason, as before there were pools
        text = f"{len(tried)} clamd failed, last {tried[-1].address}: {last}"
        return text if len(text) <= MAX_TEXT_LENGTH else text[: MAX_TEXT_LENGTH - 3] + "..."

    def watch(self) -> None:
        """Start the health checks in this event loop, once (`check()` does it). Without
        them, a failed address is still tried when no healthy one is left, and an answer
        marks it healthy again."""
        if any(not task.done() for task in self._watchers):
            return
        self._watchers = [asyncio.create_task(member.watch()) for member in self.members]

    async def close(self) -> None:
        """Stop the health checks; end the idle zIDSESSION connections."""
        for member in self.members:
            member.sessions.close()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []

    async def check(self) -> None:
        """PING and VERSION every address at once, one log line each in configuration order;
        then start the health checks. Never raises; takes at most CHECK_TIMEOUT."""
        found = await asyncio.gather(*(_check(member) for member in self.members))
        for member, (version, problem) in zip(self.members, found, strict=True):
            _log_check(member, version, problem)  # in configuration order
        self.watch()


async def check_scanners(scanner: object) -> None:
    """The start-up check of the scanner, if it is a clamd one (app.serve calls it)."""
    if isinstance(scanner, ClamdScanner):
        await scanner.check()


async def _check(member: Member) -> tuple[str | None, str | None]:
    """(version, None) or (None, why not), within CHECK_TIMEOUT; marks the member down."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await _ping_and_version(member)
    except TimeoutError:
        problem = f"no answer within {CHECK_TIMEOUT:g}s"
        member.mark_down(problem)
        return None, problem


async def _ping_and_version(member: Member) -> tuple[str | None, str | None]:
    problem = await member.ping()
    if problem is not None:
        member.mark_down(problem)
        return None, problem
    version, problem = await member.version()
    if problem is not None:
        member.mark_down(problem)
    return version, problem


def _log_check(member: Member, version: str | None, problem: str | None) -> None:
    if problem is None:
        _log.info("clamd", address=member.address, version=version)
    else:
        _log.warning("clamd unreachable", address=member.address, error=problem)


async def _pieces(content: bytes) -> AsyncIterator[list[Buffer]]:
    """The request in writes of at most WRITE content bytes each, gathered: a message that
    fits in one chunk leaves as one joined buffer (command, chunk, end); a bigger one as
    views of the content between the chunk lengths, not copied (wire.frame_views)."""
    if len(content) <= CHUNK_SIZE:
        yield [b"".join(instream_request(content))]
        return
    view = memoryview(content)
    for start in range(0, len(content), WRITE):
        group = frame_views([view[start : start + WRITE]])  # WRITE: whole chunks
        if start == 0:
            group.insert(0, INSTREAM_COMMAND)
        if start + WRITE >= len(content):
            group.append(END_OF_STREAM)
        yield group


def _addresses(
    given: str | ClamdAddress | Sequence[str | ClamdAddress],
) -> list[ClamdAddress]:
    many = [given] if isinstance(given, str) or not isinstance(given, Sequence) else list(given)
    if not many:
        raise ValueError("at least one clamd address is needed")
    found = [parse_address(one) if isinstance(one, str) else one for one in many]
    if len(set(found)) != len(found):
        raise ValueError("a clamd address is listed twice")
    return found


def _since(started: float) -> float:
    return time.monotonic() - started


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
