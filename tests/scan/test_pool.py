"""The clamd pool against fake clamd on loopback: choice, retries, health, figures, start-up.

Every scan is bounded by the scanner's own timeouts; DEADLINE is the backstop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import structlog

from filterd.scan import ClamdScanner, MemberStats, ScanResult, ScanStatus, check_scanners

from .conftest import StartFake, quick_pool
from .fake_clamd import FAKE_VERSION, Mode

DEADLINE = 10.0


def refused_address() -> str:
    """A loopback TCP port where nothing listens (connect is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp:127.0.0.1:{sock.getsockname()[1]}"


async def scan(scanner: ClamdScanner, content: bytes = b"mail") -> ScanResult:
    async with asyncio.timeout(DEADLINE):
        return await scanner.scan(content)


def figures(scanner: ClamdScanner) -> list[tuple[bool, int, int, int]]:
    """(healthy, busy, scans, errors) per address."""
    return [(s.healthy, s.busy, s.scans, s.errors) for s in scanner.stats()]


async def test_scans_spread_over_the_least_busy(start_fake: StartFake) -> None:
    one, two = await start_fake(delay=0.05), await start_fake(delay=0.05, unix=True)
    scanner = quick_pool(one.address, two.address)
    async with asyncio.timeout(DEADLINE):
        results = await asyncio.gather(*(scanner.scan(b"m%d" % i) for i in range(10)))
    assert {r.status for r in results} == {ScanStatus.CLEAN}
    assert (len(one.scans), len(two.scans)) == (5, 5)
    assert figures(scanner) == [(True, 0, 5, 0), (True, 0, 5, 0)]


@pytest.mark.parametrize(
    ("mode", "want_reason"),
    [
        pytest.param(Mode.CLOSE_MID_STREAM, "connection lost", id="closed-mid-stream"),
        pytest.param(Mode.STALL, "reply timeout after 0.3s", id="hung"),
        pytest.param(None, "connect failed (ConnectionRefusedError)", id="refused"),
    ],
)
async def test_a_failed_scan_is_retried_on_the_other(
    start_fake: StartFake, mode: Mode | None, want_reason: str
) -> None:
    good = await start_fake(reply=b"stream: Fake.Sig FOUND\0")
    bad = refused_address() if mode is None else (await start_fake(mode)).address
    scanner = quick_pool(bad, good.address)
    content = b"x" * 300_000  # several chunks: a close mid-stream is seen while sending
    got = await scan(scanner, content)
    assert (got.status, got.virus) == (ScanStatus.INFECTED, "Fake.Sig")
    assert bytes(good.scans[0].data) == content  # replayed whole
    bad_stats, good_stats = scanner.stats()
    assert (bad_stats.healthy, bad_stats.errors, good_stats.scans) == (False, 1, 1)
    assert bad_stats.last_error is not None
    assert want_reason in bad_stats.last_error


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"stream: OK\0", id="clean"),
        pytest.param(b"stream: Fake.Sig FOUND\0", id="infected"),
    ],
)
async def test_an_answer_is_never_retried(start_fake: StartFake, reply: bytes) -> None:
    first = await start_fake(reply=reply, delay=0.01)
    second = await start_fake(reply=b"stream: OK\0")
    scanner = quick_pool(first.address, second.address)
    await scan(scanner)  # goes to the first (equal figures: configuration order)
    assert (len(first.scans), len(second.scans)) == (1, 0)


@pytest.mark.parametrize(
    "reply",
    [
        # clamd 1.4.6 stopped with SIGTERM mid-stream says this (tests/integration).
        pytest.param(
            b"PROTOCOL ERROR: ancillary data sent without FILDES. ERROR\0", id="clamd-error"
        ),
        pytest.param(b"hello there\0", id="garbage"),
    ],
)
async def test_an_error_answer_is_retried_without_marking_down(
    start_fake: StartFake, reply: bytes
) -> None:
    first = await start_fake(reply=reply)
    second = await start_fake(reply=b"stream: Fake.Sig FOUND\0")
    scanner = quick_pool(first.address, second.address)
    got = await scan(scanner)
    assert (got.status, got.virus) == (ScanStatus.INFECTED, "Fake.Sig")
    assert figures(scanner) == [(True, 0, 1, 1), (True, 0, 1, 0)]


async def test_oversize_is_never_sent_anywhere(start_fake: StartFake) -> None:
    one, two = await start_fake(), await start_fake()
    got = await scan(quick_pool(one.address, two.address, max_scan_size=10), b"x" * 11)
    assert got.status is ScanStatus.OVERSIZE
    assert one.sessions == two.sessions == []


async def test_all_down_is_error_naming_the_last(start_fake: StartFake) -> None:
    hung = await start_fake(Mode.STALL)
    refused = refused_address()
    scanner = quick_pool(refused, hung.address)
    got = await scan(scanner)
    assert got.status is ScanStatus.ERROR
    assert got.reason == f"2 clamd failed, last {hung.address}: reply timeout after 0.3s"
    assert [s.errors for s in scanner.stats()] == [1, 1]


async def test_one_address_keeps_its_own_reason() -> None:
    got = await scan(quick_pool(refused_address()))
    assert got == ScanResult.error("connect failed (ConnectionRefusedError)", got.elapsed)


async def test_the_deadline_bounds_the_retries(start_fake: StartFake) -> None:
    hung = [await start_fake(Mode.STALL) for _ in range(3)]
    scanner = quick_pool(*(fake.address for fake in hung), reply_timeout=0.2, deadline=0.3)
    got = await scan(scanner)
    assert got.reason == "scan deadline 0.3s passed"
    assert sum(len(fake.scans) for fake in hung) == 2  # the third was never reached


async def test_health_checks_take_an_address_out_and_back(start_fake: StartFake) -> None:
    fake = await start_fake()
    other = await start_fake()
    scanner = quick_pool(fake.address, other.address)
    scanner.watch()
    try:
        fake.mode = Mode.STALL  # PINGs go unanswered: a hung clamd
        await _until(lambda: not scanner.stats()[0].healthy)
        for _ in range(4):
            assert (await scan(scanner)).status is ScanStatus.CLEAN
        assert len(fake.scans) == 0  # nothing sent to the unhealthy one
        fake.mode = Mode.REPLY
        await _until(lambda: scanner.stats()[0].healthy)
    finally:
        await scanner.close()
    assert fake.pings >= 2


async def test_backoff_spaces_the_pings_of_a_failed_address(start_fake: StartFake) -> None:
    hung = await start_fake(Mode.STALL)
    scanner = quick_pool(
        hung.address, io_timeout=0.05, health_interval=0.01, health_backoff_max=30.0
    )
    scanner.watch()
    try:
        # One PING at once, unanswered; the next only after 1 s. Without the backoff, the
        # 0.01 s interval would give dozens in this window.
        await asyncio.sleep(0.5)
    finally:
        await scanner.close()
    (stats,) = scanner.stats()
    assert (stats.healthy, stats.errors, hung.pings) == (False, 0, 1)


async def test_check_logs_version_or_warning(start_fake: StartFake) -> None:
    fake = await start_fake()
    refused = refused_address()
    scanner = quick_pool(fake.address, refused)
    with structlog.testing.capture_logs() as logs:
        await check_scanners(scanner)
    await scanner.close()
    lines = [(e["log_level"], e["event"], e["address"]) for e in logs if "address" in e]
    assert lines == [
        ("info", "clamd", fake.address),
        ("warning", "clamd unreachable", refused),
    ]
    assert logs[0]["version"] == FAKE_VERSION
    assert "ConnectionRefusedError" in logs[1]["error"]
    assert [s.healthy for s in scanner.stats()] == [True, False]


async def test_check_of_a_hung_clamd_is_bounded(start_fake: StartFake) -> None:
    hung = await start_fake(Mode.STALL)
    scanner = quick_pool(hung.address)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(DEADLINE):
            await scanner.check()
    await scanner.close()
    assert [(e["log_level"], e["error"]) for e in logs] == [("warning", "reply timeout after 0.3s")]


async def test_a_scan_failure_is_a_warning_naming_the_address() -> None:
    refused = refused_address()
    with structlog.testing.capture_logs() as logs:
        await scan(quick_pool(refused))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert {e["address"] for e in warnings} == {refused}
    assert {e["event"] for e in warnings} == {"clamd unhealthy", "clamd scan failed"}


def test_stats_are_copies() -> None:
    scanner = quick_pool("tcp:127.0.0.1:3310", "unix:/run/clamav/clamd.ctl")
    assert scanner.stats() == [
        MemberStats("tcp:127.0.0.1:3310", True, 0, 0, 0, None),
        MemberStats("unix:/run/clamav/clamd.ctl", True, 0, 0, 0, None),
    ]


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        pytest.param([], "at least one", id="none"),
        pytest.param(["tcp:127.0.0.1:1", "tcp:127.0.0.1:1"], "twice", id="twice"),
        pytest.param(["tcp:127.0.0.1:1", "nonsense"], "nonsense", id="one-bad"),
    ],
)
def test_bad_address_lists_are_refused(addresses: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClamdScanner(addresses)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5.0):
        while not condition():  # noqa: ASYNC110 (polls the pool's state)
            await asyncio.sleep(0.01)


async def test_check_takes_at_most_check_timeout(
    start_fake: StartFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("filterd.scan.clamd.CHECK_TIMEOUT", 0.1)
    hung = await start_fake(Mode.STALL)
    scanner = quick_pool(hung.address, io_timeout=5.0)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(2.0):
            await scanner.check()
    await scanner.close()
    assert [e["error"] for e in logs] == ["no answer within 0.1s"]
    assert not scanner.stats()[0].healthy
