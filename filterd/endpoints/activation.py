"""Listening sockets passed by the service manager (systemd socket activation).

The protocol is sd_listen_fds(3): when `LISTEN_PID` is this process, `LISTEN_FDS` sockets
start at descriptor 3 (SD_LISTEN_FDS_START), and `LISTEN_FDNAMES` names them, colon-separated
(the socket units' `FileDescriptorName=`; "unknown" when a unit gives none). filterd matches
them by name: `proxy` and `milter` are the endpoints of the same names; any other name, or a
descriptor that is not a listening stream socket, is one StartError line. Like
sd_listen_fds(…, unset_environment=1), the variables are removed once read, so that a child
process (`postconf`) does not take the sockets for its own, and each descriptor gets
FD_CLOEXEC. Why this is not a library: docs/explanation/design.md, "Service integration".
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3  # sd-daemon.h: SD_LISTEN_FDS_START
NAMES = ("proxy", "milter")  # FileDescriptorName= of the socket units in systemd/
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(ValueError):
    """The passed sockets cannot be used: one line naming what is wrong."""


def passed_sockets(
    environ: MutableMapping[str, str] | None = None,
    pid: int | None = None,
    first_fd: int = LISTEN_FDS_START,
) -> dict[str, socket.socket]:
    """The sockets passed to this process, by name; {} when none were passed.

    `environ`, `pid` and `first_fd` are this process's own unless a test gives others."""
    env = os.environ if environ is None else environ
    own = os.getpid() if pid is None else pid
    listen_pid, count, names = (env.get(name, "") for name in _VARIABLES)
    if not listen_pid.isdigit() or int(listen_pid) != own:
        return {}  # not for us (inherited from a parent that was activated)
    for name in _VARIABLES:
        env.pop(name, None)
    number = int(count or "0")
    given = names.split(":") if names else ["unknown"] * number
    if len(given) != number:
        msg = f"socket activation: LISTEN_FDNAMES has {len(given)} names for {number} sockets"
        raise ActivationError(msg)
    found: dict[str, socket.socket] = {}
    for offset, name in enumerate(given):
        found[_checked_name(name, found)] = _listening(first_fd + offset, name)
    return found


def _checked_name(name: str, found: dict[str, socket.socket]) -> str:
    if name not in NAMES:
        msg = (
            f"socket activation: a socket named {name!r} was passed; name it "
            f"{' or '.join(NAMES)} (FileDescriptorName= in the .socket unit)"
        )
        raise ActivationError(msg)
    if name in found:
        msg = f"socket activation: two sockets named {name!r}; filterd serves one per endpoint"
        raise ActivationError(msg)
    return name


def _listening(fd: int, name: str) -> socket.socket:
    """The descriptor as a socket object, if it is a listening stream socket."""
    os.set_inheritable(fd, False)  # sd_listen_fds(3) sets FD_CLOEXEC on each
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        msg = f"socket activation: descriptor {fd} ({name}) is not a socket ({exc.strerror})"
        raise ActivationError(msg) from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        msg = (
            f"socket activation: descriptor {fd} ({name}) is not a listening stream socket "
            "(use ListenStream= with Accept=no)"
        )
        raise ActivationError(msg)
    return sock


def describe(name: str | tuple[str, int] | tuple[str, int, int, int]) -> str:
    """A socket's getsockname() as filterd's log lines write it: HOST:PORT, [V6]:PORT or
    unix:PATH."""
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{name}"
