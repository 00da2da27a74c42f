"""Test support for the proxy endpoint: filterd's proxy in a thread, a fake next hop and an
in-memory transport (the fake scanner and the raw SMTP client are in `filterd.testing`).

The proxy runs on its own event loop in a thread, like the test bed's sink, so tests drive it
with plain sockets and smtplib, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from filterd.config import Config, ProxySettings
from filterd.core import Policy
from filterd.core.budget import ContentBudget
from filterd.endpoints.proxy.downstream import (
    Connector,
    Downstream,
    DownstreamError,
    NextHop,
    Reply,
)
from filterd.endpoints.proxy.endpoint import ProxyEndpoint
from filterd.pipeline import Pipeline
from filterd.testing import FakeScanner, RawSmtpClient

MESSAGE = b"Subject: s\r\n\r\nbody\r\n.\r\n"  # a small message, with its final dot
FAIL = "fail"  # a FakeHop script step that breaks the connection instead of replying


@dataclass
class HopScript:
    """What a FakeHop answers, per step, and what it received (shared by its sessions).

    Steps are verbs ("MAIL", "RCPT", "DATA", "NOOP", "XFORWARD", "QUIT") and "." for the end
    of data; the value is a reply line or FAIL. `hold` (a threading.Event) makes the end of
    data wait until it is set, so a test can act while a message is committed.
    """

    replies: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None
    lines: list[bytes] = field(default_factory=list)  # every command line received
    bodies: list[bytes] = field(default_factory=list)  # content received, per DATA
    delivered: list[bytes] = field(default_factory=list)  # content answered with 250 at "."
    dots: int = 0  # final dots received
    committed: threading.Event = field(default_factory=threading.Event)  # a "." arrived

    def answer(self, step: str, default: str) -> Reply:
        text = self.replies.get(step, default)
        if text == FAIL:
            raise DownstreamError(f"fake {step} failure")
        return Reply(int(text[:3]), (text.encode("ascii"),))


class FakeHop:
    """A NextHop in memory: answers from a HopScript, records what filterd sent."""

    def __init__(self, script: HopScript) -> None:
        self.script = script
        self.keywords = {"XFORWARD": "NAME ADDR"}
        self.last_io = asyncio.get_running_loop().time()
        self.closed = False
        self.reuse = False  # set by the pool
        self.goodbyes = 0  # goodbye() calls (an idle pooled session closed)

    def _touch(self) -> None:
        if self.closed:
            raise DownstreamError("fake connection closed")
        self.last_io = asyncio.get_running_loop().time()

    async def command(self, line: bytes) -> Reply:
        self._touch()
        self.script.lines.append(line)
        verb = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
        default = {"DATA": "354 End data with <CR><LF>.<CR><LF>", "QUIT": "221 2.0.0 Bye"}
        return self.script.answer(verb, default.get(verb, "250 2.0.0 Ok"))

    async def commands(self, lines: Sequence[bytes]) -> list[Reply]:
        return [await self.command(line) for line in lines]

    async def send_body(self, stuffed: Sequence[bytes]) -> None:
        self._touch()
        self.script.bodies.append(b"".join(stuffed))

    async def end_data(self) -> Reply:
        self._touch()
        self.script.dots += 1
        self.script.committed.set()
        hold = self.script.hold
        if hold is not None:
            await asyncio.to_thread(hold.wait, 30.0)
        number = len(self.script.delivered) + 1
        reply = self.script.answer(".", f"250 2.0.0 Ok: queued as FAKE{number}")
        if reply.code // 100 == 2:
            self.script.delivered.append(self.script.bodies[-1])
        return reply

    async def quit(self) -> None:
        self.closed = True

    def goodbye(self) -> None:
        self.goodbyes += 1
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def fake_connector(script: HopScript) -> Connector:
    async def connect(host: str, port: int, helo: str, io_timeout: float) -> NextHop:
        return FakeHop(script)

    return connect


class FakeTransport(asyncio.Transport):
    """An in-memory transport: records pause/resume and writes; `unsent` grows with every
    write, as if the client never read (tests that need it set it back to 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.aborted = False
        self.written: list[bytes] = []
        self.unsent = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))
        self.unsent += len(data)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


class RunningProxy:
    """filterd's ProxyEndpoint on 127.0.0.1, an OS-chosen port, in a thread."""

    def __init__(
        self, pipeline: Pipeline, settings: ProxySettings, connect: Connector = Downstream.connect
    ) -> None:
        self.pipeline = pipeline
        config = Config(filter=pipeline.policy, proxy=settings)
        self.endpoint = ProxyEndpoint(config, pipeline, connect)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.endpoint.start())
        self.port = self.endpoint.port

    def call(self, coroutine: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def sessions(self) -> int:
        return len(self.endpoint.sessions)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.endpoint.close(), timeout=20.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10.0)
        self.loop.close()


def start_proxy(
    downstream_port: int,
    scanner: FakeScanner | None = None,
    policy: Policy | None = None,
    hop: HopScript | None = None,
    budget: ContentBudget | None = None,
    **settings: Any,
) -> RunningProxy:
    proxy_settings = ProxySettings(
        listen="127.0.0.1:0",
        downstream=f"127.0.0.1:{downstream_port}",
        hostname="filterd.example.test",
        **settings,
    )
    pipeline = Pipeline(policy or Policy(), scanner or FakeScanner(), hostname="-", budget=budget)
    if hop is None:
        return RunningProxy(pipeline, proxy_settings)
    return RunningProxy(pipeline, proxy_settings, fake_connector(hop))


class Proxies:
    """Proxies started by one test, all closed at its end (see the `make_proxy` fixtures)."""

    def __init__(self, downstream_port: int) -> None:
        self.downstream_port = downstream_port
        self.started: list[RunningProxy] = []

    def __call__(self, **kwargs: Any) -> RunningProxy:
        downstream = kwargs.pop("downstream_port", self.downstream_port)
        proxy = start_proxy(downstream, **kwargs)
        self.started.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.started:
            proxy.close()


def proxies_to(downstream_port: int) -> Iterator[Proxies]:
    """For a `make_proxy` fixture: proxies relaying to `downstream_port`, all closed when
    the test ends."""
    proxies = Proxies(downstream_port)
    try:
        yield proxies
    finally:
        proxies.close()


def messages(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The canonical "message" log lines among captured logs."""
    return [entry for entry in logs if entry["event"] == "message"]


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll `condition` every 10 ms; fail the test if it is not true within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def open_envelope(client: RawSmtpClient) -> None:
    """MAIL and RCPT, both accepted (the fake next hop's default replies)."""
    assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
    assert client.command(b"RCPT TO:<b@example.net>\r\n").startswith("250")
