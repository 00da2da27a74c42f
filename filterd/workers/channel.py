"""What a worker process is given by its parent, and the lines it sends back.

A worker gets its number, its listening sockets (by endpoint section) and one end of a
datagram socket pair. Over it, its `Notifier` sends the sd_notify(3) lines it would send to
systemd (READY=1, RELOADING=1, STOPPING=1, STATUS=...); the parent reads them to know when
every worker is ready, and alone speaks to systemd.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Worker:
    index: int  # 0-based
    count: int
    sockets: dict[str, socket.socket]  # endpoint section -> its listening socket
    channel: socket.socket  # to the parent

    @property
    def number(self) -> int:
        """The `worker` field of the log lines: 1 to count."""
        return self.index + 1


def pair() -> tuple[socket.socket, socket.socket]:
    """(parent's end, worker's end); datagrams, so each notification is read whole."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    parent.setblocking(False)
    return parent, child


def states(datagram: bytes) -> set[str]:
    """The state keys set to 1 in an sd_notify datagram, e.g. {"READY"}."""
    found = set()
    for line in datagram.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if value == "1":
            found.add(key)
    return found
