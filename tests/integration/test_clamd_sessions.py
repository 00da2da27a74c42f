"""zIDSESSION connections kept open between scans, against the real private clamd.

A counting relay sits in front of clamd's TCP socket: it counts the connections filterd opens
and can hang up a session or hold clamd's replies back, so each failure mode below happens
for sure, not by luck of timing. Every wait is bounded (the scanner's timeouts, WAIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from filterd.scan import ClamdScanner, ScanStatus
from filterd.scan.member import Member
from filterd.testing import eicar
from tests.testbed.clamd import EICAR_NAME, Clamd

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds: the longest any condition below is waited for
CLEAN = b"From: a@example.org\r\nSubject: hi\r\n\r\n" + b"hello world\r\n" * 800
INFECTED = b"From: a@example.org\r\nSubject: hi\r\n\r\n" + b"x" * 5_000 + eicar()
BIG = b"From: a@example.org\r\n\r\n" + b"hello world\r\n" * 20_000  # streamed in parts


class Relay:
    """A TCP relay to clamd counting connections; it can hang up or hold back replies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self.received: list[int] = []  # bytes from us, per connection in order of accept
        self.closed_by_clamd = 0
        self.hold_replies = False  # clamd's replies are read and dropped, never forwarded
        self._hang_up: set[asyncio.StreamWriter] = set()  # close on the next request
        self.last_words = b""  # said before such a close
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"tcp:127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def hang_up_open_ones(self) -> None:
        """Each connection open now is closed, unanswered, when its next request comes."""
        self._hang_up = set(self._open)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.received.append(0)
        self._open.add(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        down = asyncio.create_task(self._down(up_reader, writer))
        self._tasks.add(down)
        try:
            await self._up(reader, writer, up_writer, self.accepted - 1)
        finally:
            self._open.discard(writer)
            up_writer.close()
            await asyncio.wait([down], timeout=1.0)  # clamd's last words, then its close
            down.cancel()
            self._tasks.discard(down)
            writer.close()

    async def _up(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
        index: int,
    ) -> None:
        """Our requests to clamd; once clamd stops reading, the rest is dropped, as clamd's
        socket would, so our side still gets clamd's reply rather than a reset."""
        broken = False
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.received[index] += len(data)
                if writer in self._hang_up:
                    writer.write(self.last_words)
                    return
                if broken:
                    continue
                try:
                    up_writer.write(data)
                    await up_writer.drain()
                except ConnectionError:
                    broken = True

    async def _down(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """clamd's replies to us; clamd's close becomes our EOF (a half close: our writes
        still go somewhere, as they would to a socket clamd has just closed)."""
        with contextlib.suppress(ConnectionError):
            while data := await up_reader.read(65536):
                if not self.hold_replies:
                    writer.write(data)
                    await writer.drain()
        self.closed_by_clamd += 1
        with contextlib.suppress(OSError):
            writer.write_eof()


@contextlib.asynccontextmanager
async def relay_to(clamd: Clamd) -> AsyncIterator[Relay]:
    relay = Relay(clamd.tcp_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def scanner(
    address: str, session_idle: float = 20.0, *, reply_timeout: float = 10.0, big: bool = False
) -> ClamdScanner:
    """A scanner on `address`; `big`: content over clamd's StreamMaxLength is sent anyway."""
    return ClamdScanner(
        address,
        session_idle=session_idle,
        max_concurrent=2,
        reply_timeout=reply_timeout,
        max_scan_size=10_000_000 if big else 1_000_000,
    )


def only(scanner: ClamdScanner) -> Member:
    (member,) = scanner.members
    return member


async def verdicts(scanner: ClamdScanner) -> list[tuple[ScanStatus, str | None]]:
    """Clean, EICAR, clean, EICAR streamed: each must get its own verdict."""
    got = [await scanner.scan(content) for content in (CLEAN, INFECTED, CLEAN)]
    stream = scanner.stream()
    stream.feed(BIG)
    stream.feed(INFECTED)
    got.append(await stream.finish())
    return [(result.status, result.virus) for result in got]


WANT = [
    (ScanStatus.CLEAN, None),
    (ScanStatus.INFECTED, EICAR_NAME),
    (ScanStatus.CLEAN, None),
    (ScanStatus.INFECTED, EICAR_NAME),
]


@pytest.mark.parametrize(("session_idle", "connections"), [(20.0, 1), (0.0, 4)],
                         ids=["reused", "reuse-off-one-per-scan"])  # fmt: skip
async def test_scans_share_one_connection(
    clamd: Clamd, session_idle: float, connections: int
) -> None:
    async with relay_to(clamd) as relay:
        pool = scanner(relay.address, session_idle)
        assert await verdicts(pool) == WANT
        await pool.close()
        assert relay.accepted == connections


async def test_unix_socket_session_gives_the_right_verdicts(clamd: Clamd) -> None:
    pool = scanner(clamd.address)
    assert await verdicts(pool) == WANT
    assert only(pool).sessions.opened == 1
    await pool.close()


async def test_idle_session_ended_after_session_idle(clamd: Clamd) -> None:
    async with relay_to(clamd) as relay:
        pool = scanner(relay.address, session_idle=0.2)
        assert (await pool.scan(CLEAN)).status is ScanStatus.CLEAN
        assert len(only(pool).sessions) == 1
        await until(lambda: len(only(pool).sessions) == 0)
        await until(lambda: relay.closed_by_clamd == 1)  # clamd saw zEND and closed
        assert (await pool.scan(INFECTED)).virus == EICAR_NAME
        assert relay.accepted == 2
        await pool.close()


@pytest.mark.parametrize("words", [b"", b"COMMAND READ TIMED OUT\n"], ids=["silent", "timed-out"])
async def test_session_hung_up_before_any_reply_is_retried_on_a_new_connection(
    clamd: Clamd, words: bytes
) -> None:
    async with relay_to(clamd) as relay:
        pool = scanner(relay.address)
        assert (await pool.scan(CLEAN)).status is ScanStatus.CLEAN
        relay.last_words = words  # what clamd 1.4.6 says when ReadTimeout ends a session
        relay.hang_up_open_ones()  # looks open and quiet, dies on the next request
        member = only(pool)
        assert (await pool.scan(INFECTED)).virus == EICAR_NAME
        assert (relay.accepted, member.scans, member.errors, member.healthy) == (2, 2, 0, True)
        await pool.close()


class ShortIdleClamd(Clamd):
    """A clamd that closes an idle session after 1 s (clamd.conf(5), ReadTimeout; measured:
    IdleTimeout does not close connections)."""

    def _write_config(self) -> None:
        super()._write_config()
        with self.config_path.open("a") as conf:
            conf.write("ReadTimeout 1\n")


@pytest.fixture
def short_idle_clamd() -> Iterator[Clamd]:
    clamd = ShortIdleClamd()
    try:
        clamd.start()
        yield clamd
    finally:
        clamd.close()


async def test_session_closed_by_clamd_read_timeout_is_replaced(short_idle_clamd: Clamd) -> None:
    # session_idle above clamd's ReadTimeout, against the advice: clamd closes it first.
    async with relay_to(short_idle_clamd) as relay:
        pool = scanner(relay.address, session_idle=60.0)
        member = only(pool)
        assert (await pool.scan(CLEAN)).status is ScanStatus.CLEAN
        await until(lambda: relay.closed_by_clamd == 1)
        assert (await pool.scan(INFECTED)).virus == EICAR_NAME
        assert (await pool.scan(CLEAN)).status is ScanStatus.CLEAN
        assert (relay.accepted, member.scans, member.errors, member.healthy) == (2, 3, 0, True)
        await pool.close()


@pytest.mark.parametrize("how", ["reply-timeout", "cancelled"])
async def test_scan_given_up_never_leaves_its_reply_for_the_next(clamd: Clamd, how: str) -> None:
    async with relay_to(clamd) as relay:
        pool = scanner(relay.address, reply_timeout=0.5)
        assert (await pool.scan(CLEAN)).status is ScanStatus.CLEAN
        relay.hold_replies = True  # clamd answers FOUND; the answer is held back
        if how == "reply-timeout":
            given_up = await pool.scan(INFECTED)
            want = (ScanStatus.ERROR, "reply timeout after 0.5s")
            assert (given_up.status, given_up.reason) == want
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await pool.scan(INFECTED)
        relay.hold_replies = False
        assert await verdicts(pool) == WANT
        assert relay.accepted == 2
        await pool.close()


async def test_stream_aborted_mid_way_never_leaves_its_session(clamd: Clamd) -> None:
    async with relay_to(clamd) as relay:
        pool = scanner(relay.address)
        assert (await pool.scan(CLEAN)).status is ScanStatus.CLEAN
        stream = pool.stream()
        stream.feed(BIG)  # over 64 KiB: sending starts on the open session
        await until(lambda: len(only(pool).sessions) == 0)
        await asyncio.sleep(0.1)
        stream.abort()
        assert (await stream.finish()).status is ScanStatus.ERROR
        await asyncio.sleep(0.1)
        sent = relay.received[0]
        assert await verdicts(pool) == WANT
        assert relay.accepted == 2
        assert relay.received[0] == sent  # nothing more on the given-up session
        await pool.close()


@pytest.fixture
def small_clamd() -> Iterator[Clamd]:
    clamd = Clamd(stream_max_length=100_000)
    try:
        clamd.start()
        yield clamd
    finally:
        clamd.close()


@pytest.mark.parametrize("session_idle", [20.0, 0.0], ids=["session", "reuse-off"])
async def test_size_limit_error_closes_the_session(small_clamd: Clamd, session_idle: float) -> None:
    # Over UNIX, not through the relay: over TCP, clamd's close after its reply may reset the
    # connection before the reply is read (link.py, _why_send_failed), with or without sessions.
    pool = scanner(small_clamd.address, session_idle, big=True)
    assert (await pool.scan(CLEAN)).status is ScanStatus.CLEAN
    refused = await pool.scan(BIG)
    assert (refused.status, refused.reason) == (
        ScanStatus.ERROR,
        "clamd: INSTREAM size limit exceeded.",
    )
    assert (await pool.scan(INFECTED)).virus == EICAR_NAME
    assert only(pool).sessions.opened == (2 if session_idle else 3)
    await pool.close()


async def until(condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds, at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
