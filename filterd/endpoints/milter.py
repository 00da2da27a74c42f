"""The Milter endpoint: listen where Postfix's smtpd_milters points, one session per connection.

Postfix opens one Milter connection per SMTP client session and sends every message of that
session over it (MILTER_README). filterd listens itself, on TCP or on a UNIX socket, rather
than through purepythonmilter's server: that one installs SIGINT/SIGTERM handlers that cancel
every task in the event loop, the proxy endpoint's included, and knows no UNIX sockets
(peers.md §3.1). Stopping here touches only this endpoint's own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import grp
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from filterd.config import Config, MilterSettings
from filterd.core import InfectedAction
from filterd.endpoints import milter_replies as replies
from filterd.endpoints.milter_connection import MilterConnection
from filterd.endpoints.milter_session import MilterSession, Networks, SessionOptions
from filterd.logs import get_logger
from filterd.pipeline import Pipeline

_log = get_logger("filterd.milter")

BACKLOG = 1024  # DESIGN.md §7: a short listen queue collapses under bursts


class ListenError(ValueError):
    """`listen` is not inet:HOST:PORT or unix:PATH."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    family: str  # "inet" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""


def parse_listen(text: str) -> ListenAddress:
    """Postfix's milter address syntax: inet:HOST:PORT (IPv6 in brackets) or unix:PATH."""
    family, _, rest = text.partition(":")
    if family == "unix" and rest:
        return ListenAddress("unix", path=rest)
    if family == "inet":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and int(port) < 65536:  # 0: any free port (tests)
            return ListenAddress("inet", host=host.strip("[]"), port=int(port))
    msg = f"milter listen {text!r} is not inet:HOST:PORT or unix:PATH"
    raise ListenError(msg)


def milter_pipeline(pipeline: Pipeline, settings: MilterSettings) -> Pipeline:
    """The shared pipeline, with the milter's own infected action if one is set.

    Quarantine accepts in the pipeline (so the Infected header is added) and the session
    adds the hold (milter_session._with_milter_actions).
    """
    if not settings.infected:
        return pipeline
    word = "accept" if settings.infected == "quarantine" else settings.infected
    own = copy.copy(pipeline)
    own.policy = dataclasses.replace(pipeline.policy, infected=InfectedAction(word))
    return own


class MilterEndpoint:
    name = "milter"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        settings = config.milter
        self.settings = settings
        self.address = parse_listen(settings.listen)
        self.pipeline = milter_pipeline(pipeline, settings)
        networks: Networks = tuple(
            ipaddress.ip_network(net, strict=False) for net in settings.bypass_networks
        )
        negotiation = replies.Negotiation(
            reply_connect=False,
            reply_mail=bool(networks) or settings.bypass_authenticated,
            quarantine=settings.infected == "quarantine",
        )
        self.options = SessionOptions(settings, networks, negotiation)
        self.server: asyncio.Server | None = None
        self.connections: dict[asyncio.Task[None], MilterConnection] = {}
        self.name = f"milter {settings.listen}"

    async def start(self) -> None:
        if self.address.family == "unix":
            self.server = await self._listen_unix()
        else:
            self.server = await asyncio.start_server(
                self._accept,
                self.address.host,
                self.address.port,
                backlog=BACKLOG,
                reuse_address=True,
            )

    @property
    def port(self) -> int:
        """The TCP port listened on (useful with inet:HOST:0)."""
        if self.server is None or not self.server.sockets:
            return 0
        return int(self.server.sockets[0].getsockname()[1])

    async def _listen_unix(self) -> asyncio.Server:
        path = Path(self.address.path)
        _remove_stale_socket(path)
        server = await asyncio.start_unix_server(self._accept, str(path), backlog=BACKLOG)
        # Postfix's smtpd (user postfix) connects: mode and group let it (peers.md §2.4).
        os.chmod(path, int(self.settings.socket_mode, 8))
        if self.settings.socket_group:
            os.chown(path, -1, grp.getgrnam(self.settings.socket_group).gr_gid)
        return server

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = str(writer.get_extra_info("peername") or "unix")
        session = MilterSession(self.pipeline, self.options, peer)
        connection = MilterConnection(reader, writer, session)
        # The connection runs in a task of our own, so close() can cancel exactly these.
        task = asyncio.create_task(connection.run(), name=f"milter {peer}")
        self.connections[task] = connection
        task.add_done_callback(self.connections.pop)

    async def close(self) -> None:
        """Stop listening, let messages being decided finish (bounded), close the rest."""
        if self.server is not None:
            self.server.close()
        await self._drain(self.settings.drain_timeout)
        tasks = list(self.connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        if self.address.family == "unix":
            with contextlib.suppress(FileNotFoundError):
                _remove_stale_socket(Path(self.address.path))

    async def _drain(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while any(c.session.busy for c in self.connections.values()):
            if loop.time() >= deadline:
                _log.warning("stopping with messages still being decided")
                return
            await asyncio.sleep(0.05)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by an earlier run; refuse to remove anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        msg = f"{path} exists and is not a socket"
        raise ListenError(msg)
    path.unlink()
