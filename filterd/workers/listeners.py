"""The listening sockets of a filterd with several workers, opened by the parent.

The parent opens every listener before the first worker exists, then gives up root, so a
worker never binds anything (issue 12):
- a TCP listener (`[proxy] listen`, an `inet:` `[milter] listen`) is N sockets bound to the
  same address with SO_REUSEPORT, one per worker: each worker has its own accept queue and
  the kernel spreads new connections over them (socket(7): SO_REUSEPORT);
- a UNIX socket, and a socket systemd passed (socket activation), is one socket that every
  worker accepts from: a path can be bound once, and systemd passes one descriptor.
The parent keeps its copies open while it runs: the queue of a worker that died keeps its
connections until the worker started in its place accepts them. On stop it closes them
first, so that nothing new waits in a queue that nobody will serve.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from filterd.address import parse_proxy_address
from filterd.config import Config
from filterd.endpoints.activation import describe
from filterd.endpoints.milter.endpoint import (
    BACKLOG as MILTER_BACKLOG,
)
from filterd.endpoints.milter.endpoint import (
    give_group,
    parse_listen,
    remove_own_socket,
    remove_stale_socket,
)


class ListenError(Exception):
    """A listener cannot be opened: one line naming `section.listen`."""


@dataclass
class Listener:
    section: str  # proxy | milter: the endpoint, and its socket-activation name
    name: str  # the endpoint's name in the log lines ("proxy", "milter unix:/path")
    sockets: list[socket.socket]  # one per worker (SO_REUSEPORT), or one for all
    activated: bool = False  # passed by systemd
    created: tuple[Path, os.stat_result] | None = field(default=None)  # our UNIX socket

    def for_worker(self, index: int) -> socket.socket:
        return self.sockets[index % len(self.sockets)]

    def addresses(self) -> list[str]:
        return [describe(self.sockets[0].getsockname())]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def remove(self) -> None:
        """Remove the UNIX socket filterd created, once no worker serves it any more."""
        if self.created is not None:
            remove_own_socket(*self.created)


def endpoint_name(section: str, config: Config) -> str:
    """The name an endpoint writes in its log lines (MilterEndpoint.name, ProxyEndpoint.name)."""
    return f"milter {config.milter.listen}" if section == "milter" else section


def open_listeners(config: Config, count: int, passed: dict[str, socket.socket]) -> list[Listener]:
    """Every configured listener, for `count` workers; on failure, those opened are closed."""
    opened: list[Listener] = []
    try:
        if config.proxy.listen:
            opened.append(_proxy(config, count, passed))
        if config.milter.listen:
            opened.append(_milter(config, count, passed))
    except BaseException:
        for listener in opened:
            listener.close()
            listener.remove()
        raise
    return opened


def _proxy(config: Config, count: int, passed: dict[str, socket.socket]) -> Listener:
    name = endpoint_name("proxy", config)
    if "proxy" in passed:
        return Listener("proxy", name, [passed["proxy"]], activated=True)
    sockets = _tcp("proxy", config.proxy.listen, count, config.proxy.backlog)
    return Listener("proxy", name, sockets)


def _milter(config: Config, count: int, passed: dict[str, socket.socket]) -> Listener:
    name = endpoint_name("milter", config)
    if "milter" in passed:
        return Listener("milter", name, [passed["milter"]], activated=True)
    address = parse_listen(config.milter.listen)
    if address.family == "inet":
        sockets = _tcp("milter", config.milter.listen, count, MILTER_BACKLOG)
        return Listener("milter", name, sockets)
    path = Path(address.path)
    sock = _unix(config, path)
    return Listener("milter", name, [sock], created=(path, path.lstat()))


def _tcp(section: str, text: str, count: int, backlog: int) -> list[socket.socket]:
    """`count` listening sockets on `text` (HOST:PORT, `inet:` allowed) with SO_REUSEPORT;
    port 0 is the port the first one got. Only the first address a name resolves to is used."""
    address = parse_proxy_address(text)  # the milter's inet:HOST:PORT is written alike
    host, port = address.host, address.port
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise _error(section, text, exc) from exc
    family, _, _, _, where = info[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(where)
            sock.listen(backlog)
            where = sock.getsockname()  # port 0: the others take the same port
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _error(section, text, exc) from exc
    return sockets


def _unix(config: Config, path: Path) -> socket.socket:
    """The milter's UNIX socket, made as MilterEndpoint makes its own: a stale one removed,
    then the mode and group of `[milter] socket_mode` / `socket_group`."""
    remove_stale_socket(path)  # raises the endpoint's one-line ListenError (a ConfigError)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(MILTER_BACKLOG)
        os.chmod(path, int(config.milter.socket_mode, 8))  # noqa: PTH101 (one syscall on our own new socket)
        if config.milter.socket_group:
            give_group(path, config.milter.socket_group)  # removes the socket on failure
    except OSError as exc:
        sock.close()
        raise _error("milter", config.milter.listen, exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _error(section: str, text: str, exc: BaseException) -> ListenError:
    reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
    return ListenError(f"{section}.listen: cannot listen on {text!r}: {reason}")
