"""The Milter endpoint: listen where Postfix's smtpd_milters points, one session per connection.

Postfix opens one Milter connection per SMTP client session and sends every message of that
session over it (MILTER_README). filterd listens itself, on TCP or on a UNIX socket, rather
than through purepythonmilter's server: that one installs SIGINT/SIGTERM handlers that cancel
every task in the event loop, the proxy endpoint's included, and knows no UNIX sockets
(docs/explanation/milter.md). Stopping here touches only this endpoint's own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from filterd.address import AddressError, parse_host_port
from filterd.config import Config, ConfigError, MilterSettings
from filterd.core import EndpointRules, InfectedAction, Traces
from filterd.endpoints import inflight
from filterd.endpoints.milter import replies
from filterd.endpoints.milter.connection import MilterConnection
from filterd.endpoints.milter.session import MilterSession, SessionOptions
from filterd.endpoints.net import Throttled, set_nodelay
from filterd.logs import get_logger
from filterd.pipeline import Pipeline

_log = get_logger("filterd.milter")

BACKLOG = 1024  # a short listen queue collapses under bursts (docs/explanation/design.md)


class ListenError(ConfigError):
    """`listen` is not inet:HOST:PORT or unix:PATH, or its path cannot be used.

    A ConfigError, so `filterd serve` prints the one line and exits with status 2.
    """


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
        try:
            address = parse_host_port(rest)  # port 0: any free port (tests)
        except AddressError as exc:
            msg = f"milter listen {text!r} is not inet:HOST:PORT or unix:PATH ({exc})"
            raise ListenError(msg) from None
        return ListenAddress("inet", host=address.host, port=address.port)
    msg = f"milter listen {text!r} is not inet:HOST:PORT or unix:PATH"
    raise ListenError(msg)


def milter_rules(settings: MilterSettings) -> EndpointRules:
    """What the milter sets apart from [filter]; the core decides with it.

    The milter can hold (SMFIR_QUARANTINE), so `infected = "quarantine"` is taken here.
    """
    return EndpointRules(
        infected=InfectedAction(settings.infected) if settings.infected else None,
        traces=Traces(settings.traces) if settings.traces else None,
        bypass_networks=tuple(
            ipaddress.ip_network(net, strict=False) for net in settings.bypass_networks
        ),
        bypass_authenticated=settings.bypass_authenticated,
        can_hold=True,
    )


def session_options(settings: MilterSettings) -> SessionOptions:
    rules = milter_rules(settings)
    negotiation = replies.Negotiation(
        reply_connect=False,
        reply_mail=bool(rules.bypass_networks) or rules.bypass_authenticated,
        quarantine=rules.infected is InfectedAction.QUARANTINE,
    )
    return SessionOptions(settings, rules, negotiation)


class MilterEndpoint:
    name = "milter"
    section = "milter"  # its [milter] settings and its socket-activation name

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        settings = config.milter
        self.address = parse_listen(settings.listen)
        self.refused = Throttled(_log, "too many milter connections; closing new ones",
                                 limit=settings.max_connections)  # fmt: skip
        self.reload(config, pipeline)
        self.server: asyncio.Server | None = None
        self.connections: dict[asyncio.Task[None], MilterConnection] = {}
        self.in_flight = inflight.in_flight(self.section)  # over all workers (inflight.py)
        self._socket: os.stat_result | None = None  # the UNIX socket filterd created
        self.passed: socket.socket | None = None  # a listener passed by systemd, used as is
        self.name = f"milter {settings.listen}"

    def reload(self, config: Config, pipeline: Pipeline) -> None:
        """Settings and pipeline for the connections opened from now on; connections in
        progress keep theirs. `listen` and the socket's mode and group apply only at start."""
        options = session_options(config.milter)
        self.settings, self.options, self.pipeline = config.milter, options, pipeline
        self.refused.fields["limit"] = config.milter.max_connections

    async def start(self) -> None:
        if self.passed is not None:
            # systemd made the socket (SocketMode=, SocketGroup=) and removes it.
            if self.passed.family == socket.AF_UNIX:
                self.server = await asyncio.start_unix_server(
                    self._accept, sock=self.passed, backlog=BACKLOG
                )
            else:
                self.server = await asyncio.start_server(
                    self._accept, sock=self.passed, backlog=BACKLOG
                )
        elif self.address.family == "unix":
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
        remove_stale_socket(path)
        server = await asyncio.start_unix_server(self._accept, str(path), backlog=BACKLOG)
        # Postfix's smtpd (user postfix) connects: mode and group let it
        # (docs/explanation/milter.md).
        os.chmod(path, int(self.settings.socket_mode, 8))  # noqa: PTH101 (one syscall on our own new socket; pathlib in a coroutine is ASYNC240)
        if self.settings.socket_group:
            try:
                give_group(path, self.settings.socket_group)
            except ListenError:
                server.close()  # give_group removed the socket
                raise
        self._socket = os.lstat(path)
        return server

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.in_flight.full(len(self.connections), self.settings.max_connections):
            # Closed unanswered: Postfix applies milter_default_action to that SMTP session.
            writer.close()
            self.refused.event()
            return
        set_nodelay(writer.get_extra_info("socket"))
        peer = str(writer.get_extra_info("peername") or "unix")
        session = MilterSession(self.pipeline, self.options, peer)
        connection = MilterConnection(reader, writer, session, self.settings.idle_timeout)
        # The connection runs in a task of our own, so close() can cancel exactly these.
        task = asyncio.create_task(connection.run(), name=f"milter {peer}")
        self.connections[task] = connection
        self.in_flight.publish(len(self.connections))
        task.add_done_callback(self.ended)

    def ended(self, task: asyncio.Task[None]) -> None:
        self.connections.pop(task, None)
        self.in_flight.publish(len(self.connections))

    async def close(self) -> None:
        """Stop listening; let messages in flight finish (bounded); answer or log the rest.

        Connections between messages close at once. A message being decided when
        drain_timeout ends is answered 421 4.3.2; one whose content has not arrived is left
        unanswered (Postfix applies milter_default_action), and both are logged.
        """
        if self.server is not None:
            self.server.close()
        for connection in self.connections.values():
            connection.stop()
        await self._wait(self.settings.drain_timeout)
        if self.connections:
            _log.warning("stopping with messages in flight", connections=len(self.connections))
            for connection in self.connections.values():
                connection.session.interrupt()
            await self._wait(1.0)  # the 421 answers go out
        tasks = list(self.connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.refused.flush()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        if self._socket is not None:
            remove_own_socket(Path(self.address.path), self._socket)

    async def _wait(self, seconds: float) -> None:
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=seconds)


def remove_stale_socket(path: Path) -> None:
    """Make room for filterd's socket: remove a stale one, refuse anything else.

    A socket is stale when connecting to it is refused: its process is gone. One that
    answers belongs to a running process (another filterd?) and is left alone, and so are
    symlinks and files that are not sockets.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        _refuse(path, "is a symlink")
    if not stat.S_ISSOCK(mode):
        _refuse(path, "exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # stale: left by a process that was killed
        return
    except TimeoutError:
        _refuse(path, "is in use by a running process (its listen queue is full)")
    except OSError as exc:
        _refuse(path, f"cannot be checked ({exc.strerror})")
    finally:
        probe.close()
    _refuse(path, "is in use by a running process (another filterd?)")


def give_group(path: Path, group: str) -> None:
    """`socket_group`: root may give any group; another user only one it is a member of
    (chown(2)), so a filterd user in group postfix can, others get one line. On failure the
    new socket is removed: no socket that Postfix could not use is left behind."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        path.unlink()
        msg = f"milter.socket_group: no group {group!r} on this system"
        raise ListenError(msg) from None
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        path.unlink()
        user = _user_name(os.geteuid())
        msg = (
            f"milter.socket_group: {user!r} is not a member of group {group!r}, so it cannot "
            f"give it the socket; add it (adduser {user} {group}) or start filterd as root"
        )
        raise ListenError(msg) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _refuse(path: Path, why: str) -> NoReturn:
    msg = f"milter.listen unix:{path} {why}; refusing to replace it"
    raise ListenError(msg)


def remove_own_socket(path: Path, created: os.stat_result) -> None:
    """Remove the socket at `path` only if it is still the one filterd created."""
    try:
        now = path.lstat()
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) != (created.st_dev, created.st_ino):
        _log.warning("the milter socket was replaced by another; leaving it", path=str(path))
        return
    try:
        path.unlink()
    except PermissionError:  # [server] user gave up root; the next start removes it as stale
        _log.warning("cannot remove the milter socket", path=str(path), error="EACCES")
