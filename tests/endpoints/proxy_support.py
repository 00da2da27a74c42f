"""Test support for the proxy endpoint: filterd's proxy in a thread, a fake scanner, and a
raw-bytes SMTP client with bounded reads.

The proxy runs on its own event loop in a thread, like the test bed's sink, so tests drive it
with plain sockets and smtplib, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from filterd.config import Config, ProxySettings
from filterd.core import Policy
from filterd.endpoints.smtp import ProxyEndpoint
from filterd.pipeline import Pipeline
from filterd.scan import ScanResult

VIRUS_MARKER = b"FAKE-VIRUS-MARKER"


@dataclass
class FakeScanner:
    """A Scanner: infected when the marker is in the content, else `result`."""

    result: ScanResult = field(default_factory=ScanResult.clean)
    delay: float = 0.0
    scanned: list[bytes] = field(default_factory=list)

    async def scan(self, content: bytes) -> ScanResult:
        self.scanned.append(content)
        if self.delay:
            await asyncio.sleep(self.delay)
        if VIRUS_MARKER in content:
            return ScanResult.infected("Fake.Marker")
        return self.result


class RunningProxy:
    """filterd's ProxyEndpoint on 127.0.0.1, an OS-chosen port, in a thread."""

    def __init__(self, pipeline: Pipeline, settings: ProxySettings) -> None:
        self.pipeline = pipeline
        self.endpoint = ProxyEndpoint(Config(filter=pipeline.policy, proxy=settings), pipeline)
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
    **settings: Any,
) -> RunningProxy:
    proxy_settings = ProxySettings(
        listen="127.0.0.1:0",
        downstream=f"127.0.0.1:{downstream_port}",
        hostname="filterd.example.test",
        **settings,
    )
    pipeline = Pipeline(policy or Policy(), scanner or FakeScanner(), hostname="-")
    return RunningProxy(pipeline, proxy_settings)


class Raw:
    """A raw-bytes SMTP client: send exactly these bytes, read replies with a deadline."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole (multi-line) reply as text; "" if the server closed first."""
        lines: list[str] = []
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\r\n" not in self.buffer:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\n".join(lines)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] == b" ":
                return "\n".join(lines)

    def command(self, data: bytes) -> str:
        self.send(data)
        return self.reply()

    def closed(self) -> bool:
        """True when the server has closed the connection (reads EOF within the timeout)."""
        self.sock.settimeout(self.timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def session(port: int, helo: bytes = b"EHLO client.example\r\n") -> Raw:
    """A raw client past the greeting and EHLO."""
    client = Raw(port)
    greeting = client.reply()
    assert greeting.startswith("220 "), greeting
    ehlo = client.command(helo)
    assert ehlo.startswith("250"), ehlo
    return client


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
