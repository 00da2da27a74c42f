"""Pure rules of the proxy's limits, as tables: deadlines and the minimum data rate
(Postfix smtpd_per_request_deadline / smtpd_min_data_rate), stress, keepalive, the verdict a
downstream reply gives the log line, and the Connection's flow control (no sockets)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from filterd.core import verdict as v
from filterd.endpoints.proxy import limits as smtp_limits
from filterd.endpoints.proxy.connection import HIGH_WATER, LOW_WATER, OUTPUT_LIMIT, Connection
from filterd.endpoints.proxy.downstream import Reply, refusal
from tests.endpoints.proxy_support import FakeTransport
from tests.tables import cases

# (id, deadline, now, bytes received, min rate, limit, want new deadline)
DATA_DEADLINES = [
    ("no bytes: the deadline stays", 100.0, 40.0, 0, 500.0, 300.0, 100.0),
    ("500 bytes at 500 B/s earn 1 s", 100.0, 40.0, 500, 500.0, 300.0, 101.0),
    ("never beyond the limit", 100.0, 40.0, 10**9, 500.0, 300.0, 340.0),
    ("already at the limit stays there", 340.0, 40.0, 500, 500.0, 300.0, 340.0),
    ("past the deadline: only what the bytes earn", 100.0, 110.0, 1000, 500.0, 300.0, 112.0),
    ("one byte every 4 s loses 4 s", 100.0, 4.0, 1, 500.0, 300.0, 100.002),
]


@pytest.mark.parametrize(
    ("deadline", "now", "received", "rate", "limit", "want"),
    cases(DATA_DEADLINES),
)
def test_extend_data_deadline(
    *, deadline: float, now: float, received: int, rate: float, limit: float, want: float
) -> None:
    got = smtp_limits.extend_data_deadline(deadline, now, received, rate, limit)
    assert got == pytest.approx(want), f"got {got}, want {want}"


def test_a_trickle_always_runs_out() -> None:
    """One byte every 4 s (the attack in issue 9) ends within data_timeout plus its bytes' worth."""
    now, limit, rate = 0.0, 300.0, 500.0
    deadline = now + limit
    reads = 0
    while now + 4.0 < deadline:
        now += 4.0
        deadline = smtp_limits.extend_data_deadline(deadline, now, 1, rate, limit)
        reads += 1
    assert reads < 80, f"a 1 byte / 4 s sender lasted {reads} reads"


def test_a_sender_above_the_rate_never_runs_out() -> None:
    now, limit, rate = 0.0, 10.0, 500.0
    deadline = now + limit
    for _ in range(10_000):  # 600 B/s, 1 s apart: far past the 10 s limit in total
        now += 1.0
        assert now < deadline, f"a sender above the minimum rate timed out at {now}"
        deadline = smtp_limits.extend_data_deadline(deadline, now, 600, rate, limit)


# (id, in flight, max_connections, threshold, want)
STRESS = [
    ("idle", 0, 100, 0.8, False),
    ("at the threshold", 80, 100, 0.8, False),
    ("above the threshold", 81, 100, 0.8, True),
    ("full", 100, 100, 0.8, True),
    ("threshold 1: only over the limit", 100, 100, 1.0, False),
]


@pytest.mark.parametrize(
    ("in_flight", "limit", "threshold", "want"),
    cases(STRESS),
)
def test_under_stress(in_flight: int, limit: int, threshold: float, want: bool) -> None:
    assert smtp_limits.under_stress(in_flight, limit, threshold) is want


# (id, normal, stress limit, stressed, want)
COMMAND_LIMITS = [
    ("normal", 300.0, 10.0, False, 300.0),
    ("stress", 300.0, 10.0, True, 10.0),
    ("stress never lengthens", 5.0, 10.0, True, 5.0),
]


@pytest.mark.parametrize(
    ("normal", "short", "stressed", "want"),
    cases(COMMAND_LIMITS),
)
def test_command_limit(normal: float, short: float, stressed: bool, want: float) -> None:
    assert smtp_limits.command_limit(normal, short, stressed=stressed) == want


# (id, deadline, now, stress limit, want)
HURRIED = [
    ("far deadline comes closer", 300.0, 0.0, 10.0, 10.0),
    ("near deadline stays", 5.0, 0.0, 10.0, 5.0),
]


@pytest.mark.parametrize(("deadline", "now", "short", "want"), cases(HURRIED))
def test_hurried_deadline(deadline: float, now: float, short: float, want: float) -> None:
    assert smtp_limits.hurried_deadline(deadline, now, short) == want


def test_next_keepalive() -> None:
    assert smtp_limits.next_keepalive(None, 5.0) == math.inf, "no downstream: never"
    assert smtp_limits.next_keepalive(100.0, 5.0) == 105.0


# (id, downstream reply lines, want None or (action, code, status, text, reason))
REFUSALS: list[tuple[str, tuple[bytes, ...], tuple[Any, ...] | None]] = [
    ("250 is no refusal", (b"250 2.0.0 Ok: queued as ABC",), None),
    ("354 is no refusal", (b"354 End data",), None),
    ("550 with status", (b"550 5.7.1 <b@x>: Relay access denied",),
     (v.Action.REJECT, 550, "5.7.1", "<b@x>: Relay access denied", "downstream_rejected")),
    ("451 with status", (b"451 4.3.0 Error: queue file write error",),
     (v.Action.TEMPFAIL, 451, "4.3.0", "Error: queue file write error", "downstream_tempfail")),
    ("421 timeout", (b"421 4.4.2 host Error: timeout exceeded",),
     (v.Action.TEMPFAIL, 421, "4.4.2", "host Error: timeout exceeded", "downstream_tempfail")),
    ("no enhanced status", (b"554 Transaction failed",),
     (v.Action.REJECT, 554, "5.0.0", "Transaction failed", "downstream_rejected")),
    ("status of the wrong class", (b"550 4.7.1 odd",),
     (v.Action.REJECT, 550, "5.0.0", "4.7.1 odd", "downstream_rejected")),
    ("multi-line: the first line, 8-bit bytes made safe",
     (b"550-5.1.1 caf\xc3\xa9 unknown", b"550 5.1.1 more"),
     (v.Action.REJECT, 550, "5.1.1", "caf?? unknown", "downstream_rejected")),
    ("no text at all", (b"451 ",),
     (v.Action.TEMPFAIL, 451, "4.0.0", v.TEMPFAIL_DOWNSTREAM.text, "downstream_tempfail")),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "want"), cases(REFUSALS))
def test_refusal(lines: tuple[bytes, ...], want: tuple[Any, ...] | None) -> None:
    got = refusal(Reply(int(lines[0][:3]), lines))
    if want is None:
        assert got is None, f"got {got}, want no refusal"
        return
    assert got is not None, f"got no refusal, want {want}"
    assert (got.action, got.code, got.status, got.text, got.reason) == want
    assert "\r" not in got.reply
    assert "\n" not in got.reply


# --- the Connection's flow control ------------------------------------------------------------


def connected() -> tuple[Connection, FakeTransport]:
    conn = Connection(lambda _: None)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


async def test_reading_pauses_above_high_water_and_resumes_when_consumed() -> None:
    conn, transport = connected()
    piece = b"x" * 65536
    for _ in range(100):  # nobody reads
        if transport.paused:
            break
        conn.data_received(piece)
    assert transport.paused, "reading must pause once more than HIGH_WATER waits unread"
    held = HIGH_WATER + len(piece)
    got = await conn.read_chunk(held - LOW_WATER)  # consume down to the low-water mark
    assert len(got) == held - LOW_WATER
    assert transport.paused, "still at LOW_WATER: not yet resumed"
    await conn.read_chunk(1)
    assert not transport.paused, "below LOW_WATER reading resumes"


async def test_held_input_is_bounded() -> None:
    conn, transport = connected()
    total = 0
    for _ in range(1000):  # an asyncio transport stops calling data_received once paused
        if transport.paused:
            break
        conn.data_received(b"y" * 65536)
        total += 65536
    assert total <= HIGH_WATER + 65536, f"{total} bytes held before pausing"


def test_a_client_that_does_not_read_is_cut_off() -> None:
    conn, transport = connected()
    reply = b"250 2.0.0 Ok\r\n"
    for _ in range(OUTPUT_LIMIT // len(reply) + 2):
        conn.send(reply)
    assert transport.aborted, "unsent output beyond OUTPUT_LIMIT must abort the connection"
    written = len(transport.written)
    conn.send(reply)
    assert len(transport.written) == written, "nothing is written after the abort"
