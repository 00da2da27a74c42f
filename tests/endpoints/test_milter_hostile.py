"""The Milter endpoint under hostile or unusual load, with a raw client (issue 9).

Connection budget and idle limit, bounded work per packet batch, what OPTNEG agreed, no
header bytes in logs, and stopping with messages in flight. No test depends on timing
beyond generous bounds: floods are judged by the order of events, not by durations.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from filterd.endpoints.milter import connection as milter_connection
from filterd.endpoints.milter import session as session_module
from filterd.endpoints.milter.connection import MilterConnection
from filterd.endpoints.milter.endpoint import MilterEndpoint
from filterd.testing import FakeScanner
from tests.endpoints.milter_client import (
    POSTFIX_ACTIONS,
    POSTFIX_PROTOCOL,
    MilterClient,
    packet,
)
from tests.endpoints.test_milter import BODY, CLEAN, HEADERS, client_of, running, summary
from tests.tables import cases

SPOOFED = [*HEADERS, ("X-Virus-Status", " Clean")]


async def open_client(endpoint: MilterEndpoint, **offer: int) -> MilterClient:
    milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
    await milter.negotiate(**offer)
    await milter.connect()
    return milter


async def open_envelope(endpoint: MilterEndpoint) -> MilterClient:
    """A client past MAIL FROM:<a@x.test> and RCPT TO:<b@x.test>."""
    milter = await open_client(endpoint)
    await milter.mail("a@x.test")
    await milter.rcpt("b@x.test")
    return milter


async def closed_by_peer(milter: MilterClient, wait: float = 10.0) -> bool:
    """True when the endpoint closes this connection (end of input) within `wait`."""
    try:
        async with asyncio.timeout(wait):
            while await milter.reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def lines(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


def only_connection(endpoint: MilterEndpoint) -> MilterConnection:
    (connection,) = endpoint.connections.values()
    return connection


async def in_progress(endpoint: MilterEndpoint, *, busy: bool = False) -> None:
    """Wait until filterd has seen the message start (or, with busy, its end of data)."""
    session = only_connection(endpoint).session
    async with asyncio.timeout(10):
        while not (session.busy if busy else session.in_progress):  # noqa: ASYNC110 (polls state)
            await asyncio.sleep(0.01)


# --- connection budget --------------------------------------------------------------------


async def test_connections_over_the_limit_are_closed_with_few_warnings() -> None:
    extra = 20
    async with running(max_connections=2) as (endpoint, _):
        with capture_logs() as logs:
            kept = [await open_client(endpoint) for _ in range(2)]
            refused = [await MilterClient.open_tcp("127.0.0.1", endpoint.port)
                       for _ in range(extra)]  # fmt: skip
            closed = [await closed_by_peer(milter) for milter in refused]
            for milter in refused:
                await milter.close()
            # The kept ones are still served, and a freed slot is usable again.
            got = await kept[0].message("a@x.test", ["b@x.test"], HEADERS, BODY)
            await kept[1].close()
            await asyncio.sleep(0.1)
            async with client_of(endpoint) as again:
                after = await again.message("a@x.test", ["b@x.test"], HEADERS, BODY)
            await kept[0].close()
            await endpoint.close()
    assert all(closed), closed
    assert summary(got) == CLEAN
    assert summary(after) == CLEAN
    warnings = lines(logs, "too many milter connections; closing new ones")
    assert 1 <= len(warnings) <= 2, warnings  # the first at once, the rest counted
    assert sum(entry["count"] for entry in warnings) == extra
    assert all(entry["limit"] == 2 for entry in warnings)


UNANSWERED = {"endpoint": "milter", "action": "unanswered", "reason": "idle_timeout",
              "sender": "a@x.test", "recipients": 1}  # fmt: skip
# (id, how the connection gets as far as it goes, want the "message" log lines' fields)
IDLE = [
    ("no transaction: no message line", open_client, []),
    ("a message in flight is logged unanswered", open_envelope, [UNANSWERED]),
]


@pytest.mark.parametrize(("opened", "want"), cases(IDLE))
async def test_a_connection_without_packets_is_closed_after_idle_timeout(
    opened: Callable[[MilterEndpoint], Awaitable[MilterClient]], want: list[dict[str, object]]
) -> None:
    async with running(idle_timeout=0.3) as (endpoint, _):
        with capture_logs() as logs:
            milter = await opened(endpoint)
            closed = await closed_by_peer(milter)
            await milter.close()
    assert closed
    (line,) = lines(logs, "milter connection idle; closing")
    assert line["idle_timeout"] == 0.3
    assert [{key: m[key] for key in UNANSWERED} for m in lines(logs, "message")] == want


async def test_bytes_trickling_without_a_whole_packet_do_not_keep_a_connection() -> None:
    async with running(idle_timeout=0.5) as (endpoint, _):
        milter = await open_client(endpoint)
        await milter.send(struct.pack("!I", 1000) + b"B")  # a body packet that never ends

        async def trickle() -> None:
            for _ in range(100):
                await milter.send(b"x")
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        closed = await closed_by_peer(milter, wait=4.0)
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
        await milter.close()
    assert closed, "the idle limit counts whole packets, not bytes"


async def test_before_optneg_the_limit_is_the_negotiation_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Postfix sends SMFIC_OPTNEG at once: a silent new connection is not Postfix."""
    monkeypatch.setattr(milter_connection, "NEGOTIATION_TIMEOUT", 0.3)
    async with running(idle_timeout=60) as (endpoint, _):
        silent = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
        negotiated = await open_client(endpoint)
        silent_closed = await closed_by_peer(silent)
        got = await negotiated.message("a@x.test", ["b@x.test"], HEADERS, BODY)
        await silent.close()
        await negotiated.close()
    assert silent_closed
    assert summary(got) == CLEAN, "a negotiated connection keeps its idle_timeout"


# --- bounded work per packet batch ----------------------------------------------------------

FLOOD = 60_000  # one-byte body packets (300 KB on the wire)


def flood(count: int) -> bytes:
    return packet(b"B", b"x") * count


async def test_the_connection_yields_after_a_bounded_number_of_packets() -> None:
    async with running() as (endpoint, _):
        milter = await open_client(endpoint)
        await milter.mail("a@x.test")
        connection = only_connection(endpoint)
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(connection.packets)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        start = connection.packets
        await milter.send(flood(20_000))
        got = await milter.end_of_message(wait=30)
        watcher.cancel()
        await milter.close()
    assert summary(got) == CLEAN
    steps = [b - a for a, b in itertools.pairwise(seen) if b >= start]
    assert sum(steps) >= 20_000
    # 64 per step (milter_connection.STEP_PACKETS); one 64 KiB read holds 13,000 of them.
    assert max(steps) <= 100, f"{max(steps)} packets between two loop turns"


async def test_a_flood_on_one_connection_does_not_hold_up_another() -> None:
    async with running() as (endpoint, _):
        innocent = await open_client(endpoint)
        await innocent.mail("a@x.test")
        await innocent.rcpt("b@x.test")
        await innocent.headers(HEADERS)
        await innocent.body(BODY)
        flooder = await open_client(endpoint)
        await flooder.mail("evil@x.test")
        connections = list(endpoint.connections.values())
        flooding = connections[-1]
        # Both writes reach the kernel before filterd runs again: the flood comes first.
        await flooder.send(flood(FLOOD))
        innocent_answer = asyncio.create_task(innocent.end_of_message(wait=30))
        flood_answer = asyncio.create_task(flooder.end_of_message(wait=60))
        done, _ = await asyncio.wait(
            {innocent_answer, flood_answer}, return_when=asyncio.FIRST_COMPLETED
        )
        handled_meanwhile = flooding.packets
        got = await innocent_answer
        flooded = await flood_answer
        await innocent.close()
        await flooder.close()
    assert done == {innocent_answer}, "the innocent message waited for the whole flood"
    assert handled_meanwhile < FLOOD // 4, handled_meanwhile
    assert summary(got) == CLEAN
    assert summary(flooded) == CLEAN


# --- what OPTNEG agreed -------------------------------------------------------------------

NR_BITS = 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x40000 | 0x80000 | 0x80


async def test_no_actions_offered_means_no_modifications_sent() -> None:
    async with running() as (endpoint, _):
        with capture_logs() as logs:
            milter = await open_client(endpoint, actions=0)
            negotiated = milter.negotiated
            spoofed = await milter.message("a@x.test", ["b@x.test"], SPOOFED, BODY)
            plain = await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
            infected = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-X\r\n")
            await milter.close()
    assert negotiated is not None
    assert negotiated.actions == 0
    assert negotiated.macros == b"", "no SETSYMLIST without SMFIF_SETSYMLIST"
    assert summary(spoofed) == ["c"]
    assert summary(plain) == ["c"]
    assert summary(infected) == ["y 550 5.7.1 Virus found: X"]
    (warning,) = lines(logs, "the MTA does not offer everything filterd asks for; not using it")
    assert warning["dropped"] == ["SMFIF_ADDHDRS", "SMFIF_CHGHDRS", "SMFIF_SETSYMLIST"]


# (id, offered actions, headers of the message, want)
HEADER_OFFERS = [
    ("add-only-clean-message", 0x01 | 0x100, HEADERS, CLEAN),
    ("add-only-forged-header", 0x01 | 0x100, SPOOFED, ["c"]),  # cannot delete the forgery
    ("add-and-change", 0x01 | 0x10 | 0x100, SPOOFED, ["m 1 X-Virus-Status:", *CLEAN]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("actions", "headers", "want"),
    cases(HEADER_OFFERS),
)
async def test_header_changes_follow_the_offered_actions(
    actions: int, headers: list[tuple[str, str]], want: list[str]
) -> None:
    async with running() as (endpoint, _):
        milter = await open_client(endpoint, actions=actions)
        got = await milter.message("a@x.test", ["b@x.test"], headers, BODY)
        await milter.close()
    assert summary(got) == want


async def test_quarantine_not_offered_tempfails_the_infected_message() -> None:
    async with running(infected="quarantine") as (endpoint, _):
        with capture_logs() as logs:
            milter = await open_client(endpoint, actions=POSTFIX_ACTIONS & ~0x20)
            got = await milter.message("a@x.test", ["b@x.test"], HEADERS, b"VIRUS-X\r\n")
            await milter.close()
    assert summary(got) == ["y 451 4.7.1 Virus found: X"], "never an infected accept"
    assert [x["reason"] for x in lines(logs, "message")] == ["virus"]


async def test_events_the_mta_cannot_silence_are_answered() -> None:
    async with running() as (endpoint, _):
        milter = await open_client(endpoint, protocol=POSTFIX_PROTOCOL & ~NR_BITS)
        negotiated = milter.negotiated
        got = await milter.message("a@x.test", ["b@x.test", "c@x.test"], HEADERS, BODY)
        await milter.close()
    assert negotiated is not None
    assert negotiated.protocol & NR_BITS == 0
    # connect, mail, 2 rcpt, 2 headers, 1 body chunk: each answered with SMFIR_CONTINUE.
    assert [reply.code for reply in milter.event_replies] == ["c"] * 5
    assert summary(got) == CLEAN


async def test_a_command_before_optneg_closes_the_connection() -> None:
    async with running() as (endpoint, _):
        milter = await MilterClient.open_tcp("127.0.0.1", endpoint.port)
        await milter.send(packet(b"M", b"<a@x.test>\0"))
        closed = await closed_by_peer(milter)
        await milter.close()
        async with client_of(endpoint) as good:
            got = await good.message("a@x.test", ["b@x.test"], HEADERS, BODY)
    assert closed
    assert summary(got) == CLEAN


# --- no header or message bytes in logs ------------------------------------------------------

MARKER = "Header-Bytes-4711"


async def test_a_malformed_header_is_logged_by_kind_and_size_only() -> None:
    data = f"X-{MARKER}\0{MARKER} value without its NUL".encode()
    async with running() as (endpoint, _), client_of(endpoint) as milter:
        with capture_logs() as logs:
            await milter.mail("a@x.test")
            await milter.send(packet(b"L", data))
            await milter.body(BODY)
            got = await milter.end_of_message()
    assert summary(got) == ["y 451 4.3.0 Error: internal error in mail filter"]
    (error,) = lines(logs, "milter command failed")
    assert (error["command"], error["error"], error["size"]) == (
        "Header", "ProtocolViolationCommandData", len(data)
    )  # fmt: skip
    assert MARKER not in repr(logs)


async def test_a_bug_while_handling_a_header_logs_the_code_path_not_the_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(data: bytes) -> tuple[str, bytes]:
        msg = f"cannot handle {data!r}"
        raise ValueError(msg)

    monkeypatch.setattr(session_module, "header_line", broken)
    async with running() as (endpoint, _), client_of(endpoint) as milter:
        with capture_logs() as logs:
            got = await milter.message("a@x.test", ["b@x.test"], [("Subject", MARKER)], BODY)
    assert summary(got) == ["y 451 4.3.0 Error: internal error in mail filter"]
    (error,) = lines(logs, "milter command failed")
    assert error["error"] == "ValueError"
    assert any("broken" in frame for frame in error["where"]), "the code path is kept"
    assert MARKER not in repr(logs)


# --- stopping -------------------------------------------------------------------------------


async def test_stop_closes_connections_between_messages_at_once() -> None:
    async with running(drain_timeout=30) as (endpoint, _):
        milter = await open_client(endpoint)
        await milter.message("a@x.test", ["b@x.test"], HEADERS, BODY)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await endpoint.close()
        took = loop.time() - started
        closed = await closed_by_peer(milter)
        await milter.close()
    assert closed
    assert took < 10, f"waited {took:.1f}s for a connection with nothing in flight"


async def test_a_decision_longer_than_drain_timeout_is_answered_421_and_logged() -> None:
    scanner = FakeScanner(delay=30)
    async with running(scanner, drain_timeout=0.3) as (endpoint, _):
        with capture_logs() as logs:
            milter = await open_client(endpoint)
            await milter.mail("a@x.test")
            await milter.headers(HEADERS)
            await milter.body(BODY)
            answer = asyncio.create_task(milter.end_of_message(wait=20))
            await in_progress(endpoint, busy=True)
            await endpoint.close()
            got = await answer
            closed = await closed_by_peer(milter)
            await milter.close()
    assert summary(got) == ["y 421 4.3.2 Error: service shutting down"]
    assert closed
    (line,) = lines(logs, "message")
    assert (line["action"], line["reason"], line["reply"]) == (
        "tempfail", "shutting_down", "421 4.3.2 Error: service shutting down"
    )  # fmt: skip


async def test_a_message_waiting_for_content_at_stop_is_logged_unanswered() -> None:
    async with running(drain_timeout=0.3) as (endpoint, _):
        with capture_logs() as logs:
            milter = await open_client(endpoint)
            await milter.mail("a@x.test", {"i": "QID42"})
            await milter.rcpt("b@x.test")
            await in_progress(endpoint)
            await endpoint.close()
            closed = await closed_by_peer(milter)
            await milter.close()
    assert closed
    (line,) = lines(logs, "message")
    got = {key: line[key] for key in ("action", "reason", "sender", "recipients", "reply")}
    assert got == {"action": "unanswered", "reason": "shutting_down", "sender": "a@x.test",
                   "recipients": 1, "reply": ""}  # fmt: skip


async def test_a_message_finishing_during_the_drain_is_decided_normally() -> None:
    async with running(drain_timeout=30) as (endpoint, _):
        with capture_logs() as logs:
            milter = await open_envelope(endpoint)
            await in_progress(endpoint)
            closing = asyncio.create_task(endpoint.close())
            await asyncio.sleep(0.1)
            assert not closing.done(), "a message in flight holds the drain"
            await milter.headers(HEADERS)
            await milter.body(BODY)
            got = await milter.end_of_message()
            await asyncio.wait_for(closing, 10)
            closed = await closed_by_peer(milter)
            await milter.close()
    assert summary(got) == CLEAN
    assert closed, "closed after the answer"
    assert [x["reason"] for x in lines(logs, "message")] == ["accepted"]


# --- header lines gathered before the core sees them ---------------------------------------


async def logged(logs: list[MutableMapping[str, Any]], event: str) -> list[Any]:
    async with asyncio.timeout(10):
        while not lines(logs, event):  # noqa: ASYNC110 (polls the captured log)
            await asyncio.sleep(0.01)
    return lines(logs, event)


async def test_a_message_ended_in_its_headers_is_logged_with_their_size() -> None:
    """Header lines wait to be fed with the first body chunk; a message that ends before
    one still counts them in its log line's size."""
    headers = [("Subject", " hello"), ("X-Folded", " a\n\tb")]
    want = len(b"Subject: hello\r\nX-Folded: a\r\n\tb\r\n")
    async with running() as (endpoint, _):
        with capture_logs() as logs:
            milter = await open_envelope(endpoint)
            await milter.headers(headers)
            await milter.close()
            (line,) = await logged(logs, "message")
    got = (line["action"], line["reason"], line["size"])
    assert got == ("unanswered", "mta_closed", want)


@pytest.mark.parametrize("count", [0, 1, 150, 400], ids=["none", "one", "one-batch", "batches"])
async def test_many_header_lines_reach_the_scanner_in_order(count: int) -> None:
    headers = [(f"X-Header-{index}", f" value {index} " + "v" * 100) for index in range(count)]
    want = b"".join(f"{name}:{value}\r\n".encode() for name, value in headers) + b"\r\n" + BODY
    async with running() as (endpoint, scanner), client_of(endpoint) as milter:
        got = await milter.message("a@x.test", ["b@x.test"], headers, BODY)
    assert summary(got) == CLEAN
    assert scanner.scanned[-1] == want
