"""ClamdScanner against the private clamd of the test bed (tests/testbed/clamd.py)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from filterd.scan import ClamdScanner, ScanResult, ScanStatus
from filterd.testing import eicar
from tests.testbed.clamd import (
    EICAR_NAME,
    SECOND_NAME,
    Clamd,
    second_sample_bytes,
)

pytestmark = pytest.mark.integration

DEADLINE = 30.0
MAIL = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, clamd: Clamd) -> str:
    return clamd.address if request.param == "unix" else clamd.tcp_address


def scanner_for(address: str, clamd: Clamd, **settings: int) -> ClamdScanner:
    settings.setdefault("max_scan_size", clamd.stream_max_length)
    return ClamdScanner(address, **settings)


async def scan(scanner: ClamdScanner, content: bytes) -> ScanResult:
    async with asyncio.timeout(DEADLINE):
        return await scanner.scan(content)


def mail_with_attachment(payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: attached\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nSee attachment.\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--XX--\r\n"
    )


async def test_clean(clamd: Clamd, address: str) -> None:
    got = await scan(scanner_for(address, clamd), MAIL)
    assert got == ScanResult.clean(got.elapsed)


async def test_eicar(clamd: Clamd, address: str) -> None:
    got = await scan(scanner_for(address, clamd), eicar())
    assert got == ScanResult.infected(EICAR_NAME, got.elapsed)


async def test_eicar_in_a_base64_attachment(clamd: Clamd, address: str) -> None:
    got = await scan(scanner_for(address, clamd), mail_with_attachment(eicar()))
    assert got == ScanResult.infected(EICAR_NAME, got.elapsed)


async def test_second_signature(clamd: Clamd, address: str) -> None:
    got = await scan(scanner_for(address, clamd), MAIL + second_sample_bytes())
    assert got == ScanResult.infected(SECOND_NAME, got.elapsed)


async def test_eicar_after_several_chunks(clamd: Clamd, address: str) -> None:
    got = await scan(scanner_for(address, clamd), b"x" * 300_000 + eicar())
    assert got == ScanResult.infected(EICAR_NAME, got.elapsed)


async def test_exactly_stream_max_length_is_scanned(clamd: Clamd, address: str) -> None:
    content = eicar() + b"x" * (clamd.stream_max_length - len(eicar()))
    got = await scan(scanner_for(address, clamd), content)
    assert got == ScanResult.infected(EICAR_NAME, got.elapsed)


async def test_over_max_scan_size_is_oversize_and_not_sent(clamd: Clamd, address: str) -> None:
    # EICAR first: had a single byte reached clamd, the answer would be INFECTED.
    content = eicar() + b"x" * clamd.stream_max_length
    got = await scan(scanner_for(address, clamd), content)
    assert got.status is ScanStatus.OVERSIZE
    assert got.reason == f"{len(content)} bytes exceed max_scan_size {clamd.stream_max_length}"


@pytest.mark.parametrize("extra", [1, 3 * 1024 * 1024], ids=["one-byte", "megabytes"])
async def test_max_scan_size_above_stream_max_length_is_error(
    clamd: Clamd, address: str, extra: int
) -> None:
    """A misconfiguration: clamd cuts the stream off, and that must never read as clean."""
    size = clamd.stream_max_length + extra
    scanner = scanner_for(address, clamd, max_scan_size=size)
    got = await scan(scanner, bytes(size))
    assert got.status is ScanStatus.ERROR
    assert got.reason in {
        "clamd: INSTREAM size limit exceeded.",
        "connection lost while sending (BrokenPipeError)",
        "connection lost while sending (ConnectionResetError)",
    }


async def test_clamd_stopped_is_error(clamd_stopped: Clamd) -> None:
    for address, error in [
        (clamd_stopped.address, "FileNotFoundError"),
        (clamd_stopped.tcp_address, "ConnectionRefusedError"),
    ]:
        got = await scan(scanner_for(address, clamd_stopped), eicar())
        assert got == ScanResult.error(f"connect failed ({error})", got.elapsed)


async def test_clamd_is_back_after_the_stop(clamd: Clamd, address: str) -> None:
    """Runs after test_clamd_stopped_is_error in file order: the fixture restarted clamd."""
    got = await scan(scanner_for(address, clamd), eicar())
    assert got.virus == EICAR_NAME


async def test_fifty_concurrent_scans(clamd: Clamd, address: str) -> None:
    samples = [
        (MAIL, ScanResult.clean()),
        (eicar(), ScanResult.infected(EICAR_NAME)),
        (MAIL + second_sample_bytes(), ScanResult.infected(SECOND_NAME)),
        (mail_with_attachment(eicar()), ScanResult.infected(EICAR_NAME)),
        (b"y" * 200_000, ScanResult.clean()),
    ]
    jobs = [samples[i % len(samples)] for i in range(50)]
    scanner = scanner_for(address, clamd, max_concurrent=clamd.max_threads)
    async with asyncio.timeout(DEADLINE):
        results = await asyncio.gather(*(scanner.scan(content) for content, _ in jobs))
    got = [(result.status, result.virus, result.reason) for result in results]
    want = [(result.status, result.virus, result.reason) for _, result in jobs]
    assert got == want


async def streamed(scanner: ClamdScanner, content: bytes, piece: int) -> ScanResult:
    """Feed `content` in pieces of `piece` bytes, yielding between them as a socket read does."""
    stream = scanner.stream()
    async with asyncio.timeout(DEADLINE):
        for start in range(0, len(content), piece):
            stream.feed(content[start : start + piece])
            await asyncio.sleep(0)
        return await stream.finish()


@pytest.mark.parametrize(
    ("content", "piece", "want"),
    [
        pytest.param(MAIL, 7, ScanResult.clean(), id="clean-small-pieces"),
        pytest.param(b"y" * 1_000_000, 65536, ScanResult.clean(), id="clean-1mb"),
        # EICAR at 65_980..66_048 spans the boundary of two fed pieces, and so of two
        # INSTREAM chunks: clamd must see one stream.
        pytest.param(
            b"x" * 65_980 + eicar() + b"x" * 300_000,
            1000,
            ScanResult.infected(EICAR_NAME),
            id="eicar-across-chunks",
        ),
        pytest.param(
            mail_with_attachment(eicar()), 50, ScanResult.infected(EICAR_NAME), id="attachment"
        ),
    ],
)
async def test_stream(
    clamd: Clamd, address: str, content: bytes, piece: int, want: ScanResult
) -> None:
    got = await streamed(scanner_for(address, clamd), content, piece)
    assert (got.status, got.virus) == (want.status, want.virus)


async def test_stream_over_max_scan_size_is_oversize(clamd: Clamd, address: str) -> None:
    content = eicar() + b"x" * clamd.stream_max_length
    got = await streamed(scanner_for(address, clamd), content, 65536)
    assert got.status is ScanStatus.OVERSIZE
