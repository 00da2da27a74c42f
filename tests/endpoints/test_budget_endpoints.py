"""[server] max_buffered_bytes through both endpoints: a message over the shared content budget
gets 452 4.3.1, new DATA is refused while the budget is used up, and every transaction gives
its bytes back when it ends, however it ends."""

from __future__ import annotations

import asyncio
import time

import pytest

from filterd.config import Config, MilterSettings
from filterd.core import Policy
from filterd.core.budget import ContentBudget
from filterd.endpoints.milter.endpoint import MilterEndpoint
from filterd.pipeline import Pipeline
from filterd.testing import FakeScanner, smtp_session
from tests.endpoints.proxy_support import HopScript, Proxies
from tests.endpoints.test_milter import HEADERS, client_of, summary

SMALL = b"Subject: s\r\n\r\nbody\r\n.\r\n"
LARGE = b"Subject: s\r\n\r\n" + (b"y" * 78 + b"\r\n") * 200 + b".\r\n"  # 16 KB


def send_message(port: int, content: bytes) -> str:
    client = smtp_session(port)
    try:
        assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
        assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("250")
        data = client.command(b"DATA\r\n")
        if not data.startswith("354"):
            return data
        return client.command(content)
    finally:
        client.close()


def released(budget: ContentBudget, timeout: float = 5.0) -> bool:
    """The proxy's loop thread gives the bytes back just after writing the reply, which the
    client thread may read first: poll, within a bound."""
    deadline = time.monotonic() + timeout
    while budget.in_use and time.monotonic() < deadline:
        time.sleep(0.01)
    return budget.in_use == 0


@pytest.mark.parametrize(
    ("content", "want", "delivered"),
    [(SMALL, "250 ", 1), (LARGE, "452 4.3.1 ", 0)],
    ids=["under-the-budget", "over-the-budget"],
)
def test_proxy_message_against_the_budget(
    make_proxy: Proxies, content: bytes, want: str, delivered: int
) -> None:
    budget = ContentBudget(4096)
    hop = HopScript()
    proxy = make_proxy(hop=hop, budget=budget)
    got = send_message(proxy.port, content)
    assert got.startswith(want), got
    assert len(hop.delivered) == delivered
    assert released(budget), "the transaction gave its bytes back"


def test_proxy_refuses_data_while_the_budget_is_used_up(make_proxy: Proxies) -> None:
    budget = ContentBudget(4096)
    hop = HopScript()
    proxy = make_proxy(hop=hop, budget=budget)
    assert budget.reserve(4096)  # held by other messages
    got = send_message(proxy.port, SMALL)
    assert got.startswith("452 4.3.1 "), got
    assert hop.bodies == [], "the client was never asked for content"
    budget.release(4096)
    assert send_message(proxy.port, SMALL).startswith("250 ")
    assert released(budget)


def test_proxy_client_gone_mid_data_gives_the_bytes_back(make_proxy: Proxies) -> None:
    budget = ContentBudget(1 << 20)
    proxy = make_proxy(hop=HopScript(), budget=budget)
    client = smtp_session(proxy.port)
    assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("250")
    assert client.command(b"DATA\r\n").startswith("354")
    client.send(b"Subject: s\r\n\r\n" + b"z" * 5000)
    client.close()
    for _ in range(500):
        if proxy.sessions == 0:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert proxy.sessions == 0
    assert budget.in_use == 0


async def test_milter_message_over_the_budget_is_tempfailed_and_released() -> None:
    budget = ContentBudget(2048)
    pipeline = Pipeline(Policy(), FakeScanner(), hostname="mx.test", budget=budget)
    config = Config(milter=MilterSettings(listen="inet:127.0.0.1:0"))
    endpoint = MilterEndpoint(config, pipeline)
    await endpoint.start()
    try:
        async with client_of(endpoint) as milter:
            big = await milter.message("a@x", ["b@y"], HEADERS, b"line\r\n" * 1000)
            assert summary(big) == ["y 452 4.3.1 Error: insufficient system resources"]
            assert budget.in_use == 0
            small = await milter.message("a@x", ["b@y"], HEADERS, b"line\r\n")
            assert summary(small)[-1] == "c", summary(small)
            assert budget.in_use == 0
    finally:
        await endpoint.close()
