"""zIDSESSION connections to one clamd, kept open between scans (clamd(8), "IDSESSION, END").

Rules:
- One scan at a time on a session; no multiplexing. clamd numbers the requests of a session
  from 1 and answers each `<id>: <reply>`; a reply with another id, or none, fails the scan.
- A session goes back to the idle set only after a scan on it ended with a complete
  `stream: OK` or `FOUND` reply. Any other end (timeout, cancellation, clamd's ERROR or its
  size limit, a lost connection, anything unexpected) closes it: a late reply can never be
  read as the next scan's.
- An idle session is closed with zEND after `idle` seconds, well under clamd's ReadTimeout
  (clamd.conf(5), default 120 s: measured with clamd 1.4.6, an idle session is closed after
  it with `COMMAND READ TIMED OUT`; IdleTimeout is about clamd's threads), and is checked
  (no EOF, no stray bytes) before reuse.
- A reused session found dead before any reply (EOF, reset, a write error: clamd closed it)
  is dropped and the scan sent again at once on a new connection, within the same attempt:
  scanning is idempotent. A failure on a new connection is the pool's, as before sessions.
- `idle` 0: no sessions, a new connection per scan, exactly as `Link.instream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass

from filterd.scan.link import Link, StepError
from filterd.scan.result import ScanResult, ScanStatus
from filterd.scan.stream import Source
from filterd.scan.wire import END_COMMAND, IDSESSION_COMMAND, parse_instream_reply


@dataclass(slots=True)
class Session:
    sock: socket.socket
    requests: int = 0  # sent on it so far: the next one's id is requests + 1
    idle_since: float = 0.0


class Sessions:
    """The idle sessions of one clamd, at most `keep` of them."""

    def __init__(self, link: Link, *, idle: float, keep: int) -> None:
        self.link = link
        self.idle = idle
        self.keep = keep
        self.opened = 0  # connections opened for scans, for tests and figures
        self._idle: list[Session] = []  # oldest first
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the sweeper's

    async def scan(self, source: Source) -> ScanResult:
        """One scan attempt; raises StepError as `Link.instream` does."""
        if self.idle <= 0:
            self.opened += 1
            return parse_instream_reply(await self.link.instream(source()), 0.0)
        reused = self._take()
        if reused is not None:
            try:
                return await self._scan_on(reused, source)
            except StepError as failure:
                if not failure.dead:
                    raise
                # clamd had closed it (ReadTimeout, a restart): not this clamd's failure.
        sock = await self.link.open(IDSESSION_COMMAND)
        self.opened += 1
        return await self._scan_on(Session(sock), source)

    async def _scan_on(self, session: Session, source: Source) -> ScanResult:
        session.requests += 1
        keep = False
        try:
            reply = await self.link.instream(source(), on=session.sock, number=session.requests)
            result = parse_instream_reply(reply, 0.0)
            keep = result.status in (ScanStatus.CLEAN, ScanStatus.INFECTED)
            return result
        finally:
            if keep:
                self._give_back(session)
            else:
                session.sock.close()

    def _take(self) -> Session | None:
        """The most recently used idle session that is still open and quiet."""
        self._sweep()
        while self._idle:
            session = self._idle.pop()
            if _quiet(session.sock):
                return session
            session.sock.close()
        return None

    def _give_back(self, session: Session) -> None:
        if len(self._idle) >= self.keep:
            _end(session)
            return
        session.idle_since = time.monotonic()
        self._idle.append(session)
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is not None and self._loop is loop:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()  # armed in a loop no longer running
        self._loop = loop
        self._sweeper = loop.call_later(self.idle, self._on_timer)

    def _on_timer(self) -> None:
        self._sweeper = None
        self._sweep()
        if self._idle:
            oldest = self._idle[0].idle_since
            delay = max(0.0, oldest + self.idle - time.monotonic())
            self._sweeper = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _sweep(self) -> None:
        """Close (zEND) the sessions idle for `idle` seconds or more."""
        limit = time.monotonic() - self.idle
        while self._idle and self._idle[0].idle_since <= limit:
            _end(self._idle.pop(0))

    def close(self) -> None:
        """End every idle session (the scanner's close)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            _end(self._idle.pop())

    def __len__(self) -> int:
        return len(self._idle)


def _quiet(sock: socket.socket) -> bool:
    """Open, and nothing waiting to be read: no EOF, no stray reply."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    return False  # b"": clamd closed it; bytes: nothing should be there


def _end(session: Session) -> None:
    """zEND, without waiting (clamd(8): END ends the session), then close."""
    with contextlib.suppress(OSError):
        session.sock.send(END_COMMAND, socket.MSG_DONTWAIT)
    session.sock.close()
