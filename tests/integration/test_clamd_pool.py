"""The clamd pool against two real private clamd (tests/testbed/clamd.py).

Under a steady load of scans (clean mail and EICAR, four at a time), one clamd is stopped or
hung with SIGSTOP mid-run: every scan must still get its true answer from the other, none an
ERROR. With both down the answer is ERROR, which the pipeline turns into today's 451.
Bounded: 48 scans per run, each bounded by the scanner's timeouts and DEADLINE.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator

import pytest
import structlog

from filterd.scan import ClamdScanner, ScanResult, ScanStatus, check_scanners
from filterd.testing import eicar
from tests.testbed.clamd import EICAR_NAME, Clamd

pytestmark = pytest.mark.integration

DEADLINE = 60.0
SCANS = 48
AT_ONCE = 4
BREAK_AFTER = 12  # scans answered before one clamd is broken
CLEAN = b"From: a@example.org\r\nSubject: hi\r\n\r\n" + b"hello world\r\n" * 20_000
INFECTED = b"From: a@example.org\r\nSubject: hi\r\n\r\n" + b"x" * 100_000 + eicar()


@pytest.fixture
def pair() -> Iterator[tuple[Clamd, Clamd]]:
    """Two private clamd of our own: this test breaks them."""
    started: list[Clamd] = []
    try:
        for _ in range(2):
            clamd = Clamd()
            started.append(clamd)
            clamd.start()
        yield started[0], started[1]
    finally:
        for clamd in started:
            if clamd.pid is not None:
                # A stopped process ignores SIGTERM until it is continued.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(clamd.pid, signal.SIGCONT)
            clamd.close()


def pool(pair: tuple[Clamd, Clamd]) -> ClamdScanner:
    one, two = pair
    return ClamdScanner(
        [one.address, two.tcp_address],
        max_scan_size=one.stream_max_length,
        max_concurrent=2,
        connect_timeout=1.0,
        io_timeout=1.0,
        reply_timeout=2.0,
        queue_timeout=DEADLINE,
        deadline=DEADLINE,
        health_interval=0.2,
        health_backoff_max=1.0,
    )


async def load(scanner: ClamdScanner, breaker: Callable[[], None]) -> list[ScanResult]:
    """SCANS scans, AT_ONCE at a time; `breaker` runs (in a thread) after BREAK_AFTER."""
    contents = [INFECTED if i % 3 == 0 else CLEAN for i in range(SCANS)]
    results: list[ScanResult | None] = [None] * SCANS
    done = 0
    broken: asyncio.Task[None] | None = None
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(i: int) -> None:
        nonlocal done, broken
        async with gate:
            results[i] = await scanner.scan(contents[i])
        done += 1
        if done == BREAK_AFTER:
            broken = asyncio.create_task(asyncio.to_thread(breaker))

    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*(one(i) for i in range(SCANS)))
        assert broken is not None
        await broken
    return [r for r in results if r is not None]


def want(i: int) -> tuple[ScanStatus, str | None]:
    return (ScanStatus.INFECTED, EICAR_NAME) if i % 3 == 0 else (ScanStatus.CLEAN, None)


@pytest.mark.parametrize("fault", ["stopped", "hung"])
async def test_one_member_breaks_mid_run_and_no_scan_fails(
    pair: tuple[Clamd, Clamd], fault: str
) -> None:
    _, victim = pair
    scanner = pool(pair)
    await scanner.check()
    pid = victim.pid
    assert pid is not None

    def breaker() -> None:
        if fault == "stopped":
            victim.stop()
        else:
            os.kill(pid, signal.SIGSTOP)

    try:
        results = await load(scanner, breaker)
    finally:
        await scanner.close()
    errors = [r.reason for r in results if r.status is ScanStatus.ERROR]
    assert errors == []
    assert [(r.status, r.virus) for r in results] == [want(i) for i in range(SCANS)]
    good, bad = scanner.stats()
    assert not bad.healthy
    assert bad.errors >= 1  # at least one scan met the broken clamd and was sent again
    assert good.healthy
    assert good.errors == 0
    assert good.scans + bad.scans == SCANS + bad.errors


async def test_all_down_is_error(pair: tuple[Clamd, Clamd]) -> None:
    one, two = pair
    scanner = pool(pair)
    one.stop()
    pid = two.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    async with asyncio.timeout(DEADLINE):
        got = await scanner.scan(CLEAN)
    assert got.status is ScanStatus.ERROR
    assert got.reason is not None
    assert got.reason.startswith("2 clamd failed, last ")


async def test_start_up_check_names_each_address(pair: tuple[Clamd, Clamd]) -> None:
    one, two = pair
    missing = f"unix:{one.directory / 'missing.sock'}"
    scanner = ClamdScanner([one.address, two.tcp_address, missing], connect_timeout=1.0)
    with structlog.testing.capture_logs() as logs:
        await check_scanners(scanner)
    await scanner.close()
    lines = [(e["log_level"], e["address"]) for e in logs]
    assert lines == [("info", one.address), ("info", two.tcp_address), ("warning", missing)]
    assert all(e["version"].startswith("ClamAV 1.4.") for e in logs[:2])
    assert logs[2]["error"] == "connect failed (FileNotFoundError)"
