"""The attack shapes of bench/hostile.py (issue 9), each bounded in time.

An attack runs until its target's deadline: a content shape repeats its round (a few
messages at once) while time is left; a connection shape holds its connections until the
deadline. Each returns a one-line note on what the attacker saw (replies, times).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.serve import raise_own_nofile
from bench.smtpwire import AsyncSession, SmtpError, stuffed
from tests.endpoints.milter_client import MilterClient, Reply, packet

HOST = "127.0.0.1"
Outcome = tuple[str, float]  # what the attacker was told, and after how many seconds


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each shape is; `small()` keeps the shapes and shrinks the counts."""

    milter_connections: int = 1100
    stall_bytes: int = 10_000_002
    stall_parallel: int = 5
    empty_lines: int = 4_900_000
    nolf_bytes: int = 9_900_000
    packets: int = 200_000
    silent: int = 100
    drip_interval: float = 4.0
    memory_messages: int = 40
    memory_bytes: int = 10_000_000

    @classmethod
    def small(cls) -> Sizes:
        return cls(
            milter_connections=300,
            stall_bytes=300_000,
            stall_parallel=2,
            empty_lines=150_000,
            nolf_bytes=300_000,
            packets=10_000,
            silent=100,
            drip_interval=1.0,
            memory_messages=4,
            memory_bytes=500_000,
        )


@dataclass(frozen=True, slots=True)
class Target:
    proxy_port: int
    milter_port: int
    deadline: float  # time.monotonic(): no new round starts after it
    timeout: float  # bound on every wait for a reply
    sizes: Sizes

    def left(self) -> float:
        return self.deadline - time.monotonic()


Attack = Callable[[Target], Awaitable[str]]


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, SmtpError):
        return str(exc)
    return type(exc).__name__


def summary(outcomes: list[Outcome]) -> str:
    """`3 msgs: 250 2.0.0 x3; 1.2-2.0 s each`."""
    if not outcomes:
        return "no message completed"
    counts = Counter(text for text, _ in outcomes)
    replies = ", ".join(f"{text} x{n}" for text, n in counts.most_common())
    times = [seconds for _, seconds in outcomes]
    return f"{len(outcomes)} msgs: {replies}; {min(times):.1f}-{max(times):.1f} s each"


async def rounds(target: Target, parallel: int, one: Callable[[], Awaitable[Outcome]]) -> str:
    """`parallel` messages at once, again and again until the deadline (at least once)."""
    outcomes: list[Outcome] = []
    while True:
        outcomes += await asyncio.gather(*(one() for _ in range(parallel)))
        if target.left() <= 0:
            return summary(outcomes)


# --- content -----------------------------------------------------------------------------


def clean_message(size: int) -> bytes:
    """A mail-like message of about `size` bytes: headers and base64 lines."""
    lines = max(1, size // 78)
    raw = random.Random(9).randbytes(lines * 57)
    body = b"".join(base64.b64encode(raw[i : i + 57]) + b"\r\n" for i in range(0, len(raw), 57))
    return headers(b"clean bulk") + body


def headers(subject: bytes) -> bytes:
    return (
        b"From: Attacker <attacker@example.test>\r\nTo: <x@example.test>\r\n"
        b"Subject: " + subject + b"\r\n\r\n"
    )


def stall_content(size: int) -> bytes:
    """`\\r.\\x00\\r\\x00.` repeated, no CRLF at all; then the real end of data."""
    return b"\r.\x00\r\x00." * (size // 6) + b"\r\n.\r\n"


# --- proxy shapes ------------------------------------------------------------------------


async def proxy_message(target: Target, after_data: bytes) -> Outcome:
    """One proxy transaction whose DATA content is `after_data` (terminator included)."""
    started = time.monotonic()
    try:
        session = await AsyncSession.open(HOST, target.proxy_port, target.timeout)
    except (OSError, TimeoutError) as exc:
        return f"{describe(exc)} at connect", time.monotonic() - started
    try:
        reply = await session.envelope("attacker@example.test", ["x@example.test"])
        if reply.code != 354:
            return f"{reply.short} before DATA", time.monotonic() - started
        await session.send(after_data)
        reply = await session.reply()
        return reply.short, time.monotonic() - started
    except (OSError, TimeoutError, SmtpError) as exc:
        return describe(exc), time.monotonic() - started
    finally:
        await session.close()


async def proxy_stall(target: Target) -> str:
    content = stall_content(target.sizes.stall_bytes)
    return await rounds(target, target.sizes.stall_parallel, lambda: proxy_message(target, content))


async def memory(target: Target) -> str:
    content = stuffed(clean_message(target.sizes.memory_bytes))
    return await rounds(
        target, target.sizes.memory_messages, lambda: proxy_message(target, content)
    )


async def hold(connections: list[asyncio.StreamReader], target: Target) -> int:
    """Wait for the deadline; how many connections the server closed meanwhile."""
    await asyncio.sleep(max(0.0, target.left()))
    closed = 0
    for reader in connections:
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(0.01):
                while await reader.read(4096):
                    pass
        closed += reader.at_eof()
    return closed


@dataclass(slots=True)
class Connections:
    readers: list[asyncio.StreamReader]
    writers: list[asyncio.StreamWriter]
    failures: list[str]


async def open_many(port: int, count: int) -> Connections:
    """`count` TCP connections to `port`, 100 at a time."""
    opened = Connections([], [], [])

    async def one() -> None:
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(HOST, port)
        except (OSError, TimeoutError) as exc:
            opened.failures.append(describe(exc))
        else:
            opened.readers.append(reader)
            opened.writers.append(writer)

    for start in range(0, count, 100):
        await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return opened


async def idle_connections(target: Target, port: int, count: int) -> str:
    raise_own_nofile()
    opened = await open_many(port, count)
    try:
        closed = await hold(opened.readers, target)
    finally:
        for writer in opened.writers:
            writer.close()
    failed = ""
    if opened.failures:
        first = Counter(opened.failures).most_common(1)[0][0]
        failed = f", {len(opened.failures)} failed ({first})"
    return f"{len(opened.writers)} open{failed}; {closed} closed by filterd before the end"


async def milter_fds(target: Target) -> str:
    return await idle_connections(target, target.milter_port, target.sizes.milter_connections)


async def slow_silent(target: Target) -> str:
    return await idle_connections(target, target.proxy_port, target.sizes.silent)


async def slow_drip(target: Target) -> str:
    """One byte of DATA every few seconds until the deadline, then the end of data."""
    started = time.monotonic()
    session = await AsyncSession.open(HOST, target.proxy_port, target.timeout)
    sent = 0
    try:
        reply = await session.envelope("dripper@example.test", ["x@example.test"])
        if reply.code != 354:
            return f"{reply.short} before DATA"
        await session.send(headers(b"drip"))
        while target.left() > 0:
            await asyncio.sleep(min(target.sizes.drip_interval, max(0.0, target.left())))
            if session.reader.at_eof():
                break
            await session.send(b"x")
            sent += 1
        await session.send(b"\r\n.\r\n")
        reply = await session.reply()
        seconds = time.monotonic() - started
        return f"{sent} bytes in DATA over {seconds:.0f} s, then: {reply.short}"
    except (OSError, TimeoutError, SmtpError) as exc:
        seconds = time.monotonic() - started
        return f"{sent} bytes in DATA over {seconds:.0f} s, then: {describe(exc)}"
    finally:
        await session.close()


# --- milter shapes -----------------------------------------------------------------------


def milter_answer(replies: list[Reply]) -> str:
    final = replies[-1]
    if final.code == "y":  # SMFIR_REPLYCODE: the SMTP reply Postfix will give
        return " ".join(final.text.split()[:2])
    return {"a": "accept", "c": "continue", "r": "reject", "t": "tempfail", "d": "discard"}.get(
        final.code, final.code
    )


async def milter_message(target: Target, body_packets: list[bytes]) -> Outcome:
    """One message over a fresh milter connection, as Postfix sends it; the final answer."""
    started = time.monotonic()
    client: MilterClient | None = None
    try:
        async with asyncio.timeout(target.timeout):
            client = await MilterClient.open_tcp(HOST, target.milter_port)
            await client.negotiate()
            await client.connect()
            await client.mail("attacker@example.test")
            await client.rcpt("x@example.test")
            await client.headers([("From", "<attacker@example.test>"), ("Subject", "shape")])
            await client.send(*body_packets)
            replies = await client.end_of_message(wait=target.timeout)
            await client.abort()
            await client.quit()
        return milter_answer(replies), time.monotonic() - started
    except (OSError, TimeoutError, AssertionError, asyncio.IncompleteReadError) as exc:
        return describe(exc), time.monotonic() - started
    finally:
        if client is not None:
            await client.close()


def body_packets(body: bytes, chunk: int = 65535) -> list[bytes]:
    """Postfix: milter8.c sends the body in MILTER_CHUNK_SIZE (65535) pieces."""
    return [packet(b"B", body[i : i + chunk]) for i in range(0, len(body), chunk)]


async def milter_empty_lines(target: Target) -> str:
    body = b"RCPT TO:<x@y>\r\n" + b"\r\n" * target.sizes.empty_lines
    packets = body_packets(body)
    return await rounds(target, 1, lambda: milter_message(target, packets))


async def milter_no_lf(target: Target) -> str:
    # "\r." repeated: every bare CR splits a segment that is then matched on its own.
    packets = body_packets(b"\r." * (target.sizes.nolf_bytes // 2))
    return await rounds(target, 1, lambda: milter_message(target, packets))


async def milter_flood(target: Target) -> str:
    packets = [packet(b"B", b"x")] * target.sizes.packets
    return await rounds(target, 1, lambda: milter_message(target, packets))


ATTACKS: dict[str, tuple[str, Attack]] = {
    "milter-fds": ("idle TCP connections to the milter port", milter_fds),
    "proxy-stall": ('proxy: b"\\r.\\x00\\r\\x00." repeated, no CRLF, at once', proxy_stall),
    "milter-empty-lines": ("milter: RCPT TO line + empty lines, clean", milter_empty_lines),
    "milter-no-lf": ('milter: b"\\r." repeated, no LF', milter_no_lf),
    "milter-flood": ("milter: one-byte body packets", milter_flood),
    "slow-silent": ("proxy connections that send nothing", slow_silent),
    "slow-drip": ("proxy: one byte of DATA every few seconds", slow_drip),
    "memory": ("concurrent clean messages through the proxy", memory),
}
