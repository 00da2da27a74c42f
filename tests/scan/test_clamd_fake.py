"""ClamdScanner against a fake clamd on loopback: framing, replies, failures, limits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from filterd.scan import ClamdScanner, ScanResult, ScanStatus
from filterd.scan.wire import CHUNK_SIZE

from .conftest import StartFake
from .fake_clamd import SIZE_LIMIT_REPLY, Mode

# Every scan in these tests is bounded by the scanner's own timeouts; this is the
# backstop should one of them not work.
DEADLINE = 10.0
QUICK = 0.3
# Larger than any socket buffer, so a peer that stops reading blocks the sender.
BIG = 8 * 1024 * 1024


async def scan(scanner: ClamdScanner, content: bytes) -> ScanResult:
    async with asyncio.timeout(DEADLINE):
        return await scanner.scan(content)


def quick_scanner(
    address: str,
    *,
    max_concurrent: int = 10,
    reply_timeout: float = QUICK,
    queue_timeout: float = QUICK,
) -> ClamdScanner:
    return ClamdScanner(
        address,
        max_scan_size=16 * 1024 * 1024,
        max_concurrent=max_concurrent,
        connect_timeout=QUICK,
        io_timeout=QUICK,
        reply_timeout=reply_timeout,
        queue_timeout=queue_timeout,
    )


@pytest.mark.parametrize(
    ("reply", "want"),
    [
        pytest.param(b"stream: OK\0", ScanResult.clean(), id="ok"),
        pytest.param(
            b"stream: Fake.Test.Sig FOUND\0", ScanResult.infected("Fake.Test.Sig"), id="found"
        ),
        pytest.param(
            b"INSTREAM size limit exceeded. ERROR\0",
            ScanResult.error("clamd: INSTREAM size limit exceeded."),
            id="error",
        ),
        pytest.param(
            b"hello there\0",
            ScanResult.error("unexpected reply from clamd: 'hello there'"),
            id="garbage",
        ),
        pytest.param(b"", ScanResult.error("empty reply from clamd"), id="nothing"),
        pytest.param(
            b"stream: OK", ScanResult.error("incomplete reply from clamd"), id="cut-short"
        ),
    ],
)
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
async def test_reply(start_fake: StartFake, unix: bool, reply: bytes, want: ScanResult) -> None:
    fake = await start_fake(reply=reply, unix=unix)
    got = await scan(quick_scanner(fake.address), b"Subject: hi\r\n\r\nhello\r\n")
    assert (got.status, got.virus, got.reason) == (want.status, want.virus, want.reason)
    assert got.elapsed > 0


@pytest.mark.parametrize(
    ("size", "want_lengths"),
    [
        pytest.param(0, [0], id="empty"),
        pytest.param(10, [10, 0], id="small"),
        pytest.param(
            3 * CHUNK_SIZE + 100, [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 100, 0], id="large"
        ),
    ],
)
async def test_instream_framing_on_the_wire(
    start_fake: StartFake, size: int, want_lengths: list[int]
) -> None:
    fake = await start_fake()
    content = bytes(i % 253 for i in range(size))
    got = await scan(quick_scanner(fake.address), content)
    assert got.status is ScanStatus.CLEAN
    (session,) = fake.sessions
    assert session.command == b"zINSTREAM\0"
    assert session.lengths == want_lengths
    assert bytes(session.data) == content


async def test_oversize_is_not_sent(start_fake: StartFake) -> None:
    fake = await start_fake()
    scanner = ClamdScanner(fake.address, max_scan_size=1000)
    got = await scan(scanner, b"x" * 1001)
    assert got.status is ScanStatus.OVERSIZE
    assert got.reason == "1001 bytes exceed max_scan_size 1000"
    assert fake.sessions == []


async def test_exactly_max_scan_size_is_sent(start_fake: StartFake) -> None:
    fake = await start_fake()
    got = await scan(ClamdScanner(fake.address, max_scan_size=1000), b"x" * 1000)
    assert got.status is ScanStatus.CLEAN
    assert fake.sessions[0].lengths == [1000, 0]


async def test_close_mid_stream_is_error(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.CLOSE_MID_STREAM, unix=True)
    got = await scan(quick_scanner(fake.address), b"x" * BIG)
    assert got.status is ScanStatus.ERROR
    assert got.reason is not None
    assert got.reason.startswith(("connection lost while sending", "empty reply"))


async def test_early_error_reply_is_reported(start_fake: StartFake) -> None:
    # clamd over StreamMaxLength: it replies, then closes while the client still sends.
    fake = await start_fake(Mode.EARLY_REPLY, reply=SIZE_LIMIT_REPLY, limit=100_000, unix=True)
    got = await scan(quick_scanner(fake.address), b"x" * BIG)
    assert got == ScanResult.error("clamd: INSTREAM size limit exceeded.", got.elapsed)
    assert not fake.sessions[0].ended


async def test_early_ok_reply_is_not_clean(start_fake: StartFake) -> None:
    # A reply about part of the content must not count, whatever it says.
    fake = await start_fake(Mode.EARLY_REPLY, reply=b"stream: OK\0", limit=100_000, unix=True)
    got = await scan(quick_scanner(fake.address), b"x" * BIG)
    assert got.status is ScanStatus.ERROR
    assert got.reason is not None
    assert got.reason.startswith("connection lost while sending")


async def test_stalled_reply_times_out(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.STALL)
    got = await scan(quick_scanner(fake.address), b"hello")
    assert got.reason == "reply timeout after 0.3s"
    assert got.status is ScanStatus.ERROR
    assert QUICK <= got.elapsed < DEADLINE


async def test_peer_that_never_reads_times_out_sending(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.NO_READ, unix=True)
    got = await scan(quick_scanner(fake.address), b"x" * BIG)
    assert got.reason == "send timeout after 0.3s"
    assert got.status is ScanStatus.ERROR


async def test_connection_refused_is_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    got = await scan(quick_scanner(f"tcp:127.0.0.1:{port}"), b"hello")
    assert got == ScanResult.error("connect failed (ConnectionRefusedError)", got.elapsed)


async def test_missing_unix_socket_is_error(short_dir: object) -> None:
    got = await scan(quick_scanner(f"unix:{short_dir}/absent.sock"), b"hello")
    assert got == ScanResult.error("connect failed (FileNotFoundError)", got.elapsed)


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A TCP listener that never accepts, its accept queue already full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.settimeout(QUICK)
            fillers.append(filler)
            try:
                filler.connect(address)
            except TimeoutError:
                break  # the kernel now drops our SYNs: connects hang
        else:
            pytest.skip("the kernel accepted every connect; cannot force a connect timeout")
        yield f"tcp:127.0.0.1:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_connect_timeout(full_backlog: str) -> None:
    got = await scan(quick_scanner(full_backlog), b"hello")
    assert got.reason == "connect timeout after 0.3s"
    assert got.status is ScanStatus.ERROR


@pytest.mark.parametrize("limit", [1, 5])
async def test_concurrent_scans_never_exceed_the_limit(start_fake: StartFake, limit: int) -> None:
    fake = await start_fake(delay=0.02)
    scanner = ClamdScanner(fake.address, max_concurrent=limit, queue_timeout=DEADLINE)
    async with asyncio.timeout(DEADLINE):
        results = await asyncio.gather(*(scanner.scan(b"mail %d" % i) for i in range(50)))
    assert all(result.status is ScanStatus.CLEAN for result in results)
    assert len(fake.sessions) == 50
    assert fake.max_in_flight == limit


async def test_fake_counts_unlimited_concurrency(start_fake: StartFake) -> None:
    """The check above would catch a missing limit: without one, the fake sees more."""
    fake = await start_fake(delay=0.05)
    scanner = ClamdScanner(fake.address, max_concurrent=50)
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*(scanner.scan(b"mail") for _ in range(50)))
    assert fake.max_in_flight > 10


async def test_queue_wait_is_bounded(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.STALL)
    scanner = quick_scanner(fake.address, max_concurrent=1, reply_timeout=5.0, queue_timeout=0.1)
    stuck = asyncio.create_task(scanner.scan(b"first"))
    await asyncio.sleep(0.05)
    try:
        got = await scan(scanner, b"second")
    finally:
        stuck.cancel()
    assert got.reason == "scanner busy"
    assert got.status is ScanStatus.ERROR
    assert len(fake.sessions) == 1


async def test_slot_is_freed_after_a_failure(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.STALL)
    scanner = quick_scanner(fake.address, max_concurrent=1, reply_timeout=0.05)
    for _ in range(3):
        got = await scan(scanner, b"x")
        assert got.reason == "reply timeout after 0.05s"
    assert len(fake.sessions) == 3


async def test_cancelled_scan_frees_its_slot(start_fake: StartFake) -> None:
    fake = await start_fake(Mode.STALL)
    scanner = ClamdScanner(fake.address, max_concurrent=1, reply_timeout=5.0, queue_timeout=QUICK)
    stuck = asyncio.create_task(scanner.scan(b"first"))
    await asyncio.sleep(0.05)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    fake.mode = Mode.REPLY
    got = await scan(scanner, b"second")
    assert got.status is ScanStatus.CLEAN


async def test_unexpected_exception_is_error_not_clean(
    start_fake: StartFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = await start_fake()
    scanner = quick_scanner(fake.address)

    def explode(content: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        raise RuntimeError("bug")

    monkeypatch.setattr("filterd.scan.clamd.instream_request", explode)
    got = await scan(scanner, b"hello")
    assert got == ScanResult.error("internal error (RuntimeError)", got.elapsed)


@pytest.mark.parametrize(
    "setting",
    [
        "max_scan_size",
        "max_concurrent",
        "connect_timeout",
        "io_timeout",
        "reply_timeout",
        "queue_timeout",
    ],
)
def test_settings_must_be_positive(setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        ClamdScanner("tcp:127.0.0.1:3310", **{setting: 0})


def test_bad_address_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown scheme"):
        ClamdScanner("http://localhost:3310")
