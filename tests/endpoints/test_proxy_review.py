"""Second-read regressions of the proxy's failure paths (issue 9 review), with the fake next
hop: a client that went away is never delivered for, a post-dot failure says so in the log
line, and a DATA refused for the content budget writes its canonical line."""

from __future__ import annotations

import threading
import time

from structlog.testing import capture_logs

from filterd.core.budget import ContentBudget
from filterd.testing import FakeScanner, smtp_session
from tests.endpoints.proxy_support import (
    MESSAGE,
    HopScript,
    Proxies,
    messages,
    open_envelope,
    wait_for,
)


def test_a_client_gone_during_the_scan_is_not_delivered(make_proxy: Proxies) -> None:
    """Nobody would hear the 250: the final dot must not go downstream (a duplicate when the
    sender retries), and the log line must not claim an answer."""
    hop = HopScript()
    proxy = make_proxy(hop=hop, scanner=FakeScanner(delay=0.5))
    client = smtp_session(proxy.port)
    open_envelope(client)
    assert client.command(b"DATA\r\n").startswith("354")
    with capture_logs() as logs:
        client.send(MESSAGE)
        time.sleep(0.1)  # the scan is under way
        client.close()
        wait_for(lambda: proxy.sessions == 0)
    assert hop.dots == 0
    lines = messages(logs)
    assert [(m["action"], m["reason"], m["answer"]) for m in lines] == [
        ("tempfail", "client_gone", None)
    ]


def test_the_reply_deadline_after_the_dot_is_marked(make_proxy: Proxies) -> None:
    """The known window (docs/explanation/proxy.md, "Failures"): the dot is downstream, the
    reply is late, the client is told 451 and the message may be queued. The log line says
    so, for reconciling duplicates."""
    hop = HopScript(hold=threading.Event())
    assert hop.hold is not None
    proxy = make_proxy(hop=hop, reply_deadline=0.5)
    client = smtp_session(proxy.port)
    open_envelope(client)
    assert client.command(b"DATA\r\n").startswith("354")
    with capture_logs() as logs:
        got = client.command(MESSAGE)
    hop.hold.set()
    assert got.startswith("451 4.3.0"), got
    assert hop.dots == 1
    lines = messages(logs)
    assert [(m["reason"], m.get("final_dot_sent")) for m in lines] == [("internal_error", True)]


def test_a_failure_before_the_dot_is_not_marked(make_proxy: Proxies) -> None:
    proxy = make_proxy(hop=HopScript(), scanner=FakeScanner(delay=2.0), reply_deadline=0.3)
    client = smtp_session(proxy.port)
    open_envelope(client)
    assert client.command(b"DATA\r\n").startswith("354")
    with capture_logs() as logs:
        assert client.command(MESSAGE).startswith("451 4.3.0")
    assert [m.get("final_dot_sent") for m in messages(logs)] == [None]


def test_data_refused_for_the_budget_writes_its_line(make_proxy: Proxies) -> None:
    """452 4.3.1 before the 354 is what the client was told: one canonical line, and the
    transaction ends there (so a retried DATA cannot write a second line, or none)."""
    budget = ContentBudget(10)
    assert budget.reserve(10)  # used up by "another message"
    hop = HopScript()
    proxy = make_proxy(hop=hop, budget=budget)
    client = smtp_session(proxy.port)
    open_envelope(client)
    with capture_logs() as logs:
        assert client.command(b"DATA\r\n").startswith("452 4.3.1")
        assert client.command(b"DATA\r\n").startswith("503"), "the transaction ended"
        assert client.command(b"QUIT\r\n").startswith("221")
        wait_for(lambda: proxy.sessions == 0)
    lines = messages(logs)
    assert [(m["action"], m["reason"], m["answer"][:9]) for m in lines] == [
        ("tempfail", "insufficient_resources", "452 4.3.1")
    ]
    assert b"DATA" not in hop.lines
    assert hop.dots == 0
