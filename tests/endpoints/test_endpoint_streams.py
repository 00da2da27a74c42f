"""Both endpoints feed the scanner stream while the content arrives, and end it on every path.

The scanner is FakeScanner: each stream records its chunks and ends `finished` (decided) or
`aborted` (refused, aborted, the client gone). A stream left `open` would hold a clamd
connection and a scan slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from filterd.core import Policy
from filterd.endpoints.milter.session import declared_size
from filterd.testing import FakeScanner, FakeStream, smtp_session
from tests.endpoints.milter_client import macros, packet
from tests.endpoints.proxy_support import Proxies, proxies_to
from tests.endpoints.test_milter import BODY, HEADERS, client_of, running
from tests.testbed.sink import Sink

BIG = (b"x" * 78 + b"\r\n") * 2000  # 160 KB: several pieces before the end
HEAD = b"From: a@example.test\r\nSubject: s\r\n\r\n"


def states(scanner: FakeScanner, want: int, wait: float = 3.0) -> list[str]:
    """The states of the scanner's streams once `want` of them are no longer open."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if sum(s.state != "open" for s in scanner.streams) >= want:
            break
        time.sleep(0.02)
    return [stream.state for stream in scanner.streams]


def fed(stream: FakeStream) -> bytes:
    return b"".join(stream.chunks)


# --- proxy ---------------------------------------------------------------------------------


@pytest.fixture
def make_proxy(sink: Sink) -> Iterator[Proxies]:
    """Proxies relaying to the test bed's sink."""
    yield from proxies_to(sink.port)


def test_proxy_streams_the_message_with_the_size_hint(make_proxy: Proxies, sink: Sink) -> None:
    scanner = FakeScanner()
    proxy = make_proxy(scanner=scanner)
    with smtp_session(proxy.port) as client:
        client.command(b"MAIL FROM:<a@b> SIZE=170000\r\n")
        client.command(b"RCPT TO:<c@d>\r\n")
        client.command(b"DATA\r\n")
        assert client.command(HEAD + BIG + b".\r\n").startswith("250")
    (stream,) = scanner.streams
    assert stream.state == "finished"
    assert stream.size_hint == 170_000
    assert fed(stream) == HEAD + BIG == scanner.scanned[0]


def test_proxy_client_gone_mid_data_aborts(make_proxy: Proxies, sink: Sink) -> None:
    scanner = FakeScanner()
    proxy = make_proxy(scanner=scanner)
    client = smtp_session(proxy.port)
    client.command(b"MAIL FROM:<a@b>\r\n")
    client.command(b"RCPT TO:<c@d>\r\n")
    client.command(b"DATA\r\n")
    client.send(HEAD + BIG)
    client.close()
    assert states(scanner, 1) == ["aborted"]
    assert scanner.scanned == []


def test_proxy_too_large_aborts_before_the_end(make_proxy: Proxies, sink: Sink) -> None:
    scanner = FakeScanner()
    proxy = make_proxy(scanner=scanner, policy=Policy(max_message_size=100_000))
    with smtp_session(proxy.port) as client:
        client.command(b"MAIL FROM:<a@b>\r\n")
        client.command(b"RCPT TO:<c@d>\r\n")
        client.command(b"DATA\r\n")
        client.send(HEAD + BIG)
        assert states(scanner, 1) == ["aborted"], "aborted while the data still comes"
        assert client.command(b".\r\n").startswith("552")
    assert scanner.scanned == []


# --- milter --------------------------------------------------------------------------------


async def wait_states(scanner: FakeScanner, want: int) -> list[str]:
    async with asyncio.timeout(3):
        while sum(s.state != "open" for s in scanner.streams) < want:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return [stream.state for stream in scanner.streams]


async def test_milter_streams_the_body_as_it_comes() -> None:
    async with running() as (endpoint, scanner), client_of(endpoint) as milter:
        await milter.send(macros(b"M", {}), packet(b"M", b"<a@x.test>\0SIZE=200000\0"))
        await milter.rcpt("b@x.test")
        await milter.headers(HEADERS)
        await milter.body(BIG)
        async with asyncio.timeout(3):  # body packets get no reply (SMFIP_NR_BODY)
            while not scanner.streams or len(fed(scanner.streams[0])) < 65_536:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        (stream,) = scanner.streams
        assert stream.state == "open", "the body reached the stream before its end"
        await milter.end_of_message()
    assert stream.state == "finished"
    assert stream.size_hint == 200_000
    assert fed(stream) == scanner.scanned[0]
    assert fed(stream).endswith(BIG)


async def test_milter_abort_and_lost_connection_abort_the_stream() -> None:
    async with running() as (endpoint, scanner):
        async with client_of(endpoint) as milter:
            await milter.mail("a@x.test")
            await milter.headers(HEADERS)
            await milter.body(BIG)
            await milter.abort()
            assert await wait_states(scanner, 1) == ["aborted"]
            await milter.mail("a@x.test")
            await milter.headers(HEADERS)
            await milter.body(BIG)
        assert await wait_states(scanner, 2) == ["aborted", "aborted"]
        async with client_of(endpoint) as milter:
            await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert [s.state for s in scanner.streams] == ["aborted", "aborted", "finished"]


# (esmtp args as purepythonmilter decodes them, want size hint)
def test_declared_size() -> None:
    cases: list[tuple[dict[str, str | None], int]] = [
        ({"SIZE": "1234"}, 1234),
        ({"size": "99"}, 99),
        ({"BODY": "8BITMIME"}, 0),
        ({"SIZE": None}, 0),
        ({"SIZE": "12a"}, 0),
        ({"SIZE": "²"}, 0),
    ]
    got = [declared_size(args) for args, _ in cases]
    assert got == [want for _, want in cases]
