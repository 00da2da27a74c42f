"""The pool of downstream sessions (filterd/endpoints/proxy/pool.py): its bounds, and which
ends of a transaction give the session back, against a fake next hop
(tests/endpoints/proxy_support.py) and, for the final dot, a small smtpd on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from filterd.config import Config, ConfigError, ProxySettings
from filterd.core import Policy
from filterd.endpoints.proxy.downstream import Downstream, DownstreamError, NextHop, Reply
from filterd.endpoints.proxy.pool import NO_REUSE, Bounds, DownstreamPool
from filterd.pipeline import Pipeline
from filterd.testing import FakeScanner, smtp_session
from tests.endpoints.proxy_support import (
    FAIL,
    MESSAGE,
    FakeHop,
    HopScript,
    RunningProxy,
    wait_for,
)
from tests.tables import cases

REUSE = Bounds(size=4, idle_time=30.0, max_transactions=100)


class Opened:
    """An opener of FakeHops that keeps every hop it opened."""

    def __init__(self, script: HopScript | None = None) -> None:
        self.script = script or HopScript()
        self.hops: list[FakeHop] = []

    async def __call__(self) -> NextHop:
        hop = FakeHop(self.script)
        self.hops.append(hop)
        return hop


# --- the pool's own rules -------------------------------------------------------------------

BOUNDS = [
    # id, bounds, transactions run one after another, want connections opened
    ("reuse", REUSE, 5, 1),
    ("pool_size_0_no_reuse", Bounds(0, 30.0, 100), 3, 3),
    ("idle_time_0_no_reuse", Bounds(4, 0.0, 100), 3, 3),
    ("max_messages_0_no_reuse", Bounds(4, 30.0, 0), 3, 3),
    ("max_messages_1_no_reuse", Bounds(4, 30.0, 1), 3, 3),
    ("max_messages_2_then_new", Bounds(4, 30.0, 2), 5, 3),
    ("no_bounds_no_reuse", NO_REUSE, 2, 2),
]


@pytest.mark.parametrize(("bounds", "transactions", "want"), cases(BOUNDS))
async def test_bounds_decide_how_often_a_session_is_opened(
    bounds: Bounds, transactions: int, want: int
) -> None:
    opened = Opened()
    pool = DownstreamPool(opened, bounds)
    for _ in range(transactions):
        lease = await pool.acquire()
        if not pool.release(lease):
            await lease.hop.quit()
    assert (len(opened.hops), pool.opened) == (want, want)
    pool.close()


async def test_the_last_transaction_a_session_may_carry_is_marked_to_close() -> None:
    """max_transactions: the last lease says reuse=False, so its dot goes with QUIT."""
    pool = DownstreamPool(Opened(), Bounds(4, 30.0, 3))
    got = []
    for _ in range(3):
        lease = await pool.acquire()
        got.append((lease.uses, lease.reused, lease.hop.reuse))
        pool.release(lease)
    assert got == [(1, False, True), (2, True, True), (3, True, False)]
    assert pool.idle == [], "the third ended the session: nothing kept"


async def test_at_most_size_sessions_stay_idle() -> None:
    opened = Opened()
    pool = DownstreamPool(opened, Bounds(2, 30.0, 100))
    leases = [await pool.acquire() for _ in range(3)]
    assert [pool.release(lease) for lease in leases] == [True, True, False]
    assert len(pool.idle) == 2
    pool.close()


async def test_an_idle_session_is_closed_after_idle_time() -> None:
    opened = Opened()
    pool = DownstreamPool(opened, Bounds(4, 0.05, 100))
    assert pool.release(await pool.acquire())
    await asyncio.sleep(0.3)
    assert pool.idle == []
    assert (opened.hops[0].goodbyes, opened.hops[0].closed) == (1, True)
    lease = await pool.acquire()
    assert (lease.reused, pool.opened) == (False, 2), "a new session after the idle limit"


async def test_a_session_closed_while_idle_is_skipped() -> None:
    """The smtpd closed it (EOF): no round trip is spent on it."""
    opened = Opened()
    pool = DownstreamPool(opened, REUSE)
    first = await pool.acquire()
    assert pool.release(first)
    opened.hops[0].closed = True
    second = await pool.acquire()
    assert (second.reused, second.hop is first.hop, pool.opened) == (False, False, 2)


async def test_close_says_goodbye_to_idle_sessions_and_keeps_none_after() -> None:
    opened = Opened()
    pool = DownstreamPool(opened, REUSE)
    kept, in_use = await pool.acquire(), await pool.acquire()
    assert pool.release(kept)
    pool.close()
    assert [hop.goodbyes for hop in opened.hops] == [1, 0], "the one in use is untouched"
    assert not in_use.hop.closed
    assert not pool.release(in_use), "released after close: the caller closes it"


async def test_a_fresh_acquire_ignores_idle_sessions() -> None:
    opened = Opened()
    pool = DownstreamPool(opened, REUSE)
    assert pool.release(await pool.acquire())
    lease = await pool.acquire(fresh=True)
    assert (lease.reused, pool.opened, len(pool.idle)) == (False, 2, 1)
    pool.close()


# --- settings -------------------------------------------------------------------------------

SETTINGS = [
    ("negative_pool", {"downstream_pool_size": -1}, "proxy.downstream_pool_size"),
    ("negative_messages", {"downstream_max_messages": -1}, "proxy.downstream_max_messages"),
    ("negative_idle", {"downstream_idle_time": -0.5}, "proxy.downstream_idle_time"),
    ("idle_past_smtpd_timeout", {"downstream_idle_time": 301.0}, "proxy.downstream_idle_time"),
    ("idle_nan", {"downstream_idle_time": float("nan")}, "proxy.downstream_idle_time"),
]


@pytest.mark.parametrize(("values", "want"), cases(SETTINGS))
def test_bad_pool_settings_are_refused(values: dict[str, float], want: str) -> None:
    with pytest.raises(ConfigError, match=want):
        ProxySettings(**values)  # type: ignore[arg-type]


def test_the_defaults_reuse_with_documented_bounds() -> None:
    settings = ProxySettings()
    bounds = Bounds.of(settings)
    assert bounds == Bounds(size=20, idle_time=2.0, max_transactions=100)
    assert bounds.reuse
    assert not Bounds.of(ProxySettings(downstream_pool_size=0)).reuse


# --- which ends give the session back (a whole proxy, fake next hop) -------------------------


class Counting:
    """A Connector of FakeHops over one script, counting the sessions it opened."""

    def __init__(self, script: HopScript, make: Callable[[HopScript], FakeHop] = FakeHop) -> None:
        self.script, self.make = script, make
        self.hops: list[FakeHop] = []

    async def __call__(self, host: str, port: int, helo: str, io_timeout: float) -> NextHop:
        hop = self.make(self.script)
        self.hops.append(hop)
        return hop


@pytest.fixture
def proxies() -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def start(
        connect: Counting, scanner: FakeScanner | None = None, **settings: object
    ) -> RunningProxy:
        proxy_settings = ProxySettings(
            listen="127.0.0.1:0", downstream="127.0.0.1:1", hostname="filterd.example.test",
            **settings,  # type: ignore[arg-type]
        )  # fmt: skip
        pipeline = Pipeline(Policy(), scanner or FakeScanner(), hostname="-")
        proxy = RunningProxy(pipeline, proxy_settings, connect)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()


def one_message(port: int, content: bytes = MESSAGE, xforward: bytes = b"") -> str:
    """One front session (as Postfix's smtpd makes per message): the reply to the dot."""
    client = smtp_session(port)
    try:
        if xforward:
            assert client.command(xforward + b"\r\n").startswith("250")
        if not client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250"):
            return "refused at MAIL"
        client.command(b"RCPT TO:<b@example.net>\r\n")
        data = client.command(b"DATA\r\n")
        if not data.startswith("354"):
            return data
        return client.command(content)
    finally:
        client.command(b"QUIT\r\n")
        client.close()


ENDS = [
    # id, the next hop's replies for the first message, want sessions opened for two messages
    ("clean_end_reused", {}, 1),
    ("dot_4xx_closes", {".": "451 4.3.0 try later"}, 2),
    ("dot_5xx_closes", {".": "554 5.7.1 no"}, 2),
    ("rcpt_refused_closes", {"RCPT": "550 5.1.1 unknown"}, 2),
    ("xforward_refused_closes", {"XFORWARD": "501 5.5.4 bad attribute"}, 2),
    ("data_refused_closes", {"DATA": "554 5.5.1 no valid recipients"}, 2),
    ("mail_refused_closes", {"MAIL": "553 5.1.8 bad sender"}, 2),
    ("mail_broken_closes", {"MAIL": FAIL}, 2),
    ("dot_broken_closes", {".": FAIL}, 2),
]


@pytest.mark.parametrize(("replies", "want"), cases(ENDS))
def test_only_a_clean_end_gives_the_session_back(
    proxies: Callable[..., RunningProxy], replies: dict[str, str], want: int
) -> None:
    script = HopScript(replies=dict(replies))
    connect = Counting(script)
    port = proxies(connect).port
    one_message(port, xforward=b"XFORWARD NAME=a.example ADDR=192.0.2.1")
    script.replies.clear()  # the second message goes through cleanly
    assert one_message(port).startswith("250")
    wait_for(lambda: len(script.delivered) >= 1)
    assert len(connect.hops) == want


def test_a_message_refused_by_filterd_closes_the_session(
    proxies: Callable[..., RunningProxy],
) -> None:
    """A virus: the downstream saw MAIL and RCPT, never DATA; it is not a clean end."""
    connect = Counting(HopScript())
    port = proxies(connect).port
    assert one_message(port, b"Subject: v\r\n\r\nVIRUS-test\r\n.\r\n").startswith("550")
    assert one_message(port).startswith("250")
    assert len(connect.hops) == 2


def test_with_reuse_off_every_message_gets_its_own_session(
    proxies: Callable[..., RunningProxy],
) -> None:
    connect = Counting(HopScript())
    port = proxies(connect, downstream_pool_size=0).port
    for _ in range(3):
        assert one_message(port).startswith("250")
    assert len(connect.hops) == 3
    assert [hop.reuse for hop in connect.hops] == [False] * 3


class DiesWhenIdle(FakeHop):
    """A session that the smtpd ends while it is idle in the pool: after the first message,
    the next command gets `after` (a 421 reply or FAIL: EOF/reset)."""

    after = "421 4.4.2 filterd.example.test Error: timeout exceeded"

    def __init__(self, script: HopScript) -> None:
        super().__init__(script)
        self.messages = 0

    async def end_data(self) -> Reply:
        reply = await super().end_data()
        self.messages += 1
        return reply

    async def command(self, line: bytes) -> Reply:
        if self.messages and self.after == FAIL:
            raise DownstreamError("reset by peer")
        if self.messages:
            return Reply(421, (self.after.encode(),))
        return await super().command(line)


@pytest.mark.parametrize("after", [DiesWhenIdle.after, FAIL], ids=["421", "reset"])
def test_a_pooled_session_dead_before_mail_is_replaced_unseen(
    proxies: Callable[..., RunningProxy], after: str
) -> None:
    script = HopScript()

    def make(script: HopScript) -> FakeHop:
        hop = DiesWhenIdle(script)
        hop.after = after
        return hop

    connect = Counting(script, make)
    port = proxies(connect).port
    assert one_message(port).startswith("250")
    assert one_message(port, xforward=b"XFORWARD ADDR=192.0.2.2").startswith("250")
    assert len(connect.hops) == 2, "the dead session was replaced"
    assert len(script.delivered) == 2, "each message delivered once"
    second = script.lines[script.lines.index(b"XFORWARD ADDR=192.0.2.2") :]
    assert second[:2] == [b"XFORWARD ADDR=192.0.2.2", b"MAIL FROM:<a@example.org>"]


class DiesAfterMail(FakeHop):
    """A pooled session that accepts MAIL of the second message, then breaks."""

    async def command(self, line: bytes) -> Reply:
        if len(self.script.delivered) and line.startswith(b"RCPT"):
            raise DownstreamError("reset by peer")
        return await super().command(line)


def test_once_mail_was_accepted_a_failure_is_not_replayed(
    proxies: Callable[..., RunningProxy],
) -> None:
    script = HopScript()
    connect = Counting(script, DiesAfterMail)
    port = proxies(connect).port
    assert one_message(port).startswith("250")
    client = smtp_session(port)
    assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("451 4.3.0")
    client.close()
    assert len(connect.hops) == 1, "no new session behind the client's back after MAIL"
    assert len(script.delivered) == 1


def test_reload_and_shutdown_close_idle_sessions(
    proxies: Callable[..., RunningProxy],
) -> None:
    connect = Counting(HopScript())
    proxy = proxies(connect)
    assert one_message(proxy.port).startswith("250")
    wait_for(lambda: bool(proxy.endpoint.pool and proxy.endpoint.pool.idle))
    config = Config(filter=proxy.pipeline.policy, proxy=proxy.endpoint.settings)

    async def reload() -> None:
        proxy.endpoint.reload(config, proxy.pipeline)

    proxy.call(reload())
    assert connect.hops[0].goodbyes == 1, "reload closed the idle session"
    assert one_message(proxy.port).startswith("250")
    assert len(connect.hops) == 2, "a new pool opens a new session"
    wait_for(lambda: bool(proxy.endpoint.pool and proxy.endpoint.pool.idle))
    proxy.call(proxy.endpoint.close())
    assert connect.hops[1].goodbyes == 1, "shutdown closed the idle session"


# --- the final dot of a session that will be reused -----------------------------------------


class Recording:
    """Offers PIPELINING, answers every line at once, records what came, per connection."""

    def __init__(self) -> None:
        self.connections: list[list[bytes]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[bytes] = []
        self.connections.append(lines)
        writer.write(b"220 test ESMTP\r\n")
        in_data = False
        try:
            while line := await reader.readline():
                lines.append(line)
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        writer.write(b"250 2.0.0 Ok: queued as ABC123\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-test\r\n250-XFORWARD NAME ADDR\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    in_data = True
                    writer.write(b"354 go on\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 Ok\r\n")
        finally:
            writer.close()


async def transaction(hop: NextHop) -> Reply:
    await hop.commands([b"XFORWARD ADDR=192.0.2.7", b"MAIL FROM:<a@example.org>"])
    await hop.command(b"RCPT TO:<b@example.net>")
    await hop.command(b"DATA")
    await hop.send_body([b"Subject: a\r\n\r\nbody\r\n"])
    return await hop.end_data()


@contextlib.asynccontextmanager
async def recorded() -> AsyncIterator[tuple[Recording, Callable[[], Awaitable[NextHop]]]]:
    """A recording smtpd on a free port, and an opener of real Downstream sessions to it."""
    server = Recording()
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]

        async def opener() -> NextHop:
            return await Downstream.connect("127.0.0.1", port, "filterd.test", io_timeout=5)

        yield server, opener


async def test_a_reused_session_sends_the_dot_alone_and_quits_at_its_end() -> None:
    async with recorded() as (server, opener):
        pool = DownstreamPool(opener, Bounds(4, 30.0, 2))
        for _ in range(2):
            lease = await pool.acquire()
            assert (await transaction(lease.hop)).code == 250
            if not pool.release(lease):
                await lease.hop.quit()  # it reads the 221: every line has arrived
    lines = server.connections
    assert len(lines) == 1, "two transactions, one connection"
    dots = [index for index, line in enumerate(lines[0]) if line == b".\r\n"]
    assert lines[0][dots[0] + 1] == b"XFORWARD ADDR=192.0.2.7\r\n", "no QUIT after the 1st dot"
    assert lines[0][dots[1] + 1 :] == [b"QUIT\r\n"], "the last one pipelines QUIT"


async def test_an_idle_real_session_says_quit_and_a_closed_one_is_seen() -> None:
    """Downstream.goodbye() writes QUIT and closes (no wait for the 221); Downstream.closed
    is true once the smtpd has closed its side and nothing of its is left unread."""
    async with recorded() as (server, opener):
        pool = DownstreamPool(opener, Bounds(4, 0.05, 100))
        lease = await pool.acquire()
        assert (await transaction(lease.hop)).code == 250
        assert pool.release(lease)
        for _ in range(200):
            if server.connections[0][-1:] == [b"QUIT\r\n"] and lease.hop.closed:
                break
            await asyncio.sleep(0.01)
        assert server.connections[0][-1] == b"QUIT\r\n"
        assert lease.hop.closed

        other = await opener()
        assert not other.closed
        await other.command(b"QUIT")  # the server answers 221 and closes its side
        for _ in range(200):
            if other.closed:
                break
            await asyncio.sleep(0.01)
        assert other.closed, "EOF from the smtpd is seen without a read"
        other.abort()
