"""zIDSESSION sessions (filterd/scan/session.py) against the fake clamd and a liar.

The real clamd's behaviour is in tests/integration/test_clamd_sessions.py; here, what the
real one never does: a reply with another request's id, and the byte-level rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from filterd.config import ClamdSettings, ConfigError
from filterd.scan import ClamdScanner, ScanStatus
from filterd.scan.wire import session_reply

from .conftest import StartFake

REPLIES = [
    ("own-id", b"1: stream: OK\0", 1, b"stream: OK\0"),
    ("own-id-two-digits", b"12: stream: Eicar FOUND\0", 12, b"stream: Eicar FOUND\0"),
    ("other-id", b"2: stream: OK\0", 1, None),
    ("id-prefix-of-another", b"12: stream: OK\0", 1, None),
    ("no-id", b"stream: OK\0", 1, None),
    ("no-space", b"1:stream: OK\0", 1, None),
    ("empty", b"", 1, None),
]


@pytest.mark.parametrize(("reply", "number", "want"), [case[1:] for case in REPLIES],
                         ids=[case[0] for case in REPLIES])  # fmt: skip
def test_session_reply(reply: bytes, number: int, want: bytes | None) -> None:
    got = session_reply(reply, number)
    assert got == want, f"got {got!r}, want {want!r}"


def test_negative_session_idle_is_refused() -> None:
    with pytest.raises(ValueError, match="session_idle must be 0 or more"):
        ClamdScanner("unix:/nowhere", session_idle=-1.0)
    with pytest.raises(ConfigError, match=r"clamd\.session_idle: -1 is not"):
        ClamdSettings(session_idle=-1)
    assert ClamdSettings(session_idle=0).session_idle == 0


async def test_three_scans_one_session(start_fake: StartFake) -> None:
    fake = await start_fake()
    pool = ClamdScanner(fake.address, session_idle=10.0)
    for _ in range(3):
        assert (await pool.scan(b"hello")).status is ScanStatus.CLEAN
    commands = [one.command for one in fake.sessions]
    assert commands == [b"zIDSESSION\0"] + [b"zINSTREAM\0"] * 3
    assert [bytes(one.data) for one in fake.scans] == [b"hello"] * 3
    await pool.close()


async def test_error_reply_closes_the_session(start_fake: StartFake) -> None:
    fake = await start_fake(reply=b"stream: Can't allocate memory ERROR\0")
    pool = ClamdScanner(fake.address, session_idle=10.0)
    for _ in range(2):
        result = await pool.scan(b"hello")
        assert (result.status, result.reason) == (ScanStatus.ERROR, "clamd: Can't allocate memory")
    commands = [one.command for one in fake.sessions]
    assert commands == [b"zIDSESSION\0", b"zINSTREAM\0"] * 2  # a new session each time
    assert len(pool.members[0].sessions) == 0
    await pool.close()


async def test_idle_session_ended_with_zend(start_fake: StartFake) -> None:
    fake = await start_fake()
    pool = ClamdScanner(fake.address, session_idle=0.1)
    assert (await pool.scan(b"hello")).status is ScanStatus.CLEAN
    sessions = pool.members[0].sessions
    assert len(sessions) == 1
    deadline = time.monotonic() + 5.0
    while len(sessions):
        assert time.monotonic() < deadline, "the idle session was never ended"
        await asyncio.sleep(0.02)
    await pool.close()


async def test_close_ends_idle_sessions(start_fake: StartFake) -> None:
    fake = await start_fake()
    pool = ClamdScanner(fake.address, session_idle=10.0)
    assert (await pool.scan(b"hello")).status is ScanStatus.CLEAN
    await pool.close()
    assert len(pool.members[0].sessions) == 0


class Liar:
    """A clamd that answers every request of a session (empty content) with the id `said`."""

    def __init__(self, said: int) -> None:
        self.said = said
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await reader.readuntil(b"\0")  # zIDSESSION
            while await reader.readuntil(b"\0") == b"zINSTREAM\0":
                await reader.readexactly(4)  # the empty content's end chunk
                writer.write(b"%d: stream: OK\0" % self.said)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def liar() -> AsyncIterator[tuple[Liar, str]]:
    one = Liar(said=7)
    server = await asyncio.start_server(one.serve, "127.0.0.1", 0)
    yield one, f"tcp:127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def test_reply_with_another_id_is_an_error_and_closes_the_session(
    liar: tuple[Liar, str],
) -> None:
    fake, address = liar
    pool = ClamdScanner(address, session_idle=10.0)
    for _ in range(2):
        result = await pool.scan(b"")
        assert (result.status, result.reason) == (
            ScanStatus.ERROR,
            "reply from clamd not for this request",
        )
    assert fake.accepted == 2  # never reused
    assert pool.members[0].healthy  # clamd answered: not down
    await pool.close()
