"""Readiness and status for the service manager (systemd `Type=notify`).

The protocol is sd_notify(3): one datagram of newline-separated `KEY=VALUE` lines to the
AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
filterd sends `READY=1` once every endpoint listens, `RELOADING=1` with `MONOTONIC_USEC=`
(the CLOCK_MONOTONIC time in microseconds, which systemd 253+ asks of `Type=notify-reload`
services; older ones ignore it) when SIGHUP starts a reload and `READY=1` when it is done,
`STOPPING=1` when SIGTERM starts the drain, and `STATUS=` with a one-line summary.
Without `$NOTIFY_SOCKET` (not started by systemd) every call does nothing; a failed send is
logged once and never stops filterd. A worker process (`[server] workers` > 1) sends the same
lines to its parent over a socket pair instead (`channel`), and only the parent, the
service's main process (NotifyAccess=main), speaks to systemd. Why this is not a library:
docs/explanation/design.md, "Service integration".
"""

from __future__ import annotations

import os
import socket
import time

from filterd.logs import get_logger

_log = get_logger("filterd.notify")


def socket_address(text: str) -> str | None:
    """The AF_UNIX address of `$NOTIFY_SOCKET`; None when it is not one filterd can use."""
    if text.startswith("@"):
        return "\0" + text[1:]  # sd_notify(3): abstract namespace
    if text.startswith("/"):
        return text
    return None  # e.g. systemd 254's vsock:CID:PORT, for virtual machines


class Notifier:
    """Sends sd_notify(3) messages; does nothing when there is no service manager."""

    def __init__(
        self, environ: dict[str, str] | None = None, *, channel: socket.socket | None = None
    ) -> None:
        self.channel = channel  # a worker's connected datagram socket to its parent
        text = (
            "" if channel else (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        )
        self.address = socket_address(text) if text else None
        self.failed = False  # logged once
        if text and self.address is None:
            _log.warning("NOTIFY_SOCKET is not an AF_UNIX socket; not notifying", value=text)

    def send(self, *lines: str) -> None:
        data = "\n".join(lines).encode()
        try:
            if self.channel is not None:
                self.channel.send(data)
            elif self.address is not None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                    sock.sendto(data, self.address)
        except OSError as exc:
            if not self.failed:
                self.failed = True
                _log.warning("cannot notify the service manager", error=exc.strerror)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining sessions")
