"""The smtpd_proxy_filter endpoint: listen, bound the sessions, stop gracefully.

Postfix's before-filter smtpd connects here once per message (peers.md §1.1) and relays
filterd's replies to its client; each session is a `ProxySession` (session.py). This module
owns only the listening socket:
- a large listen backlog (a short one collapses under bursts: DESIGN.md §7);
- at most `max_connections` sessions: more are answered 421 4.7.0 and closed at once, so a
  flood costs one write per connection (Postfix: anvil-style limits, RFC 5321 §3.8);
- `close()` stops accepting, lets sessions finish for a bounded time, then cancels them
  (each answers 421 4.3.2 on its way out).

Why not aiosmtpd: docs/explanation/proxy.md, "Why not an aiosmtpd subclass".
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from filterd.config import Config
from filterd.core import verdict as v
from filterd.endpoints import smtp_replies as replies
from filterd.endpoints.smtp_connection import Connection
from filterd.endpoints.smtp_session import ProxySession, Site, Target
from filterd.logs import get_logger
from filterd.pipeline import Pipeline

_log = get_logger("filterd.proxy")
CLOSE_GRACE = 10.0  # seconds sessions get to finish at shutdown


def split_address(text: str) -> Target:
    """`HOST:PORT` or `[IPv6]:PORT` (the syntax of Postfix's smtpd_proxy_filter)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) >= 65536:
        msg = f"not HOST:PORT: {text!r}"
        raise ValueError(msg)
    return Target(host.removeprefix("inet:").strip("[]"), int(port))


class ProxyEndpoint:
    name = "proxy"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        self.settings = config.proxy
        self.pipeline = pipeline
        self.listen = split_address(self.settings.listen)
        self.downstream = split_address(self.settings.downstream)
        self.hostname = self.settings.hostname or socket.gethostname()
        self.xforward_networks = [
            ipaddress.ip_network(word)
            for word in self.settings.xforward_hosts.replace(",", " ").split()
        ]
        self.sessions: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        if self.server is None:
            raise RuntimeError("not started")
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self.opened),
            self.listen.host,
            self.listen.port,
            backlog=self.settings.backlog,
            reuse_address=True,
        )

    def opened(self, conn: Connection) -> None:
        if len(self.sessions) >= self.settings.max_connections:
            conn.send(replies.verdict(v.TEMPFAIL_TOO_MANY_CONNECTIONS))
            conn.close()
            _log.warning("too many connections", peer=conn.peer, limit=len(self.sessions))
            return
        session = ProxySession(
            conn,
            self.settings,
            self.pipeline,
            Site(self.hostname, self.downstream, self.trusts_xforward(conn)),
        )
        task = asyncio.get_running_loop().create_task(session.run())
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)

    def trusts_xforward(self, conn: Connection) -> bool:
        """Postfix: smtpd_authorized_xforward_hosts, for filterd's own listener."""
        if conn.peer is None:
            return False
        try:
            address = ipaddress.ip_address(conn.peer[0])
        except ValueError:
            return False
        return any(address in network for network in self.xforward_networks)

    async def close(self) -> None:
        if self.server is None:
            return
        self.server.close()
        if self.sessions:
            _, pending = await asyncio.wait(set(self.sessions), timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self.server.wait_closed()
