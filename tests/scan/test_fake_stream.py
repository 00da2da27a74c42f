"""FakeScanner.stream(): the same answers as FakeScanner.scan() on the joined chunks."""

from __future__ import annotations

import pytest

from filterd.scan import ScanResult, ScanStatus
from filterd.testing import VIRUS_MARKER, FakeScanner


async def test_chunks_are_scanned_joined() -> None:
    fake = FakeScanner()
    stream = fake.stream(size_hint=10)
    for chunk in (b"hello ", VIRUS_MARKER[:3], VIRUS_MARKER[3:], b" bye"):
        stream.feed(chunk)
    got = await stream.finish()
    assert got == ScanResult.infected("Fake.Marker")
    assert fake.scanned == [b"hello " + VIRUS_MARKER + b" bye"]
    assert (fake.streams, stream.state, stream.size_hint) == ([stream], "finished", 10)


async def test_oversize() -> None:
    fake = FakeScanner(max_scan_size=3)
    stream = fake.stream()
    stream.feed(b"four")
    got = await stream.finish()
    assert (got.status, got.reason) == (ScanStatus.OVERSIZE, "4 bytes exceed max_scan_size 3")
    assert fake.scanned == []


async def test_abort_then_nothing_more() -> None:
    stream = FakeScanner().stream()
    stream.abort()
    assert stream.state == "aborted"
    with pytest.raises(RuntimeError):
        stream.feed(b"late")
    with pytest.raises(RuntimeError):
        await stream.finish()


async def test_configured_result_and_breakage() -> None:
    stream = FakeScanner(result=ScanResult.error("down")).stream()
    assert await stream.finish() == ScanResult.error("down")
    broken = FakeScanner(result=RuntimeError("bug")).stream()
    with pytest.raises(RuntimeError, match="bug"):
        await broken.finish()
