"""Process-wide network resources shared by the endpoints: file descriptors, accept errors,
and the socket options both endpoints set (TCP addresses are parsed by `filterd.address`).

- At start, the soft RLIMIT_NOFILE is raised to the hard limit, and filterd refuses to start
  when the configured connection limits cannot fit in it: running out of descriptors stops
  *every* endpoint at once, so it must not be reachable by connecting within the limits.
- When accept() fails for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM), asyncio calls
  the loop's exception handler for every failed attempt, up to the listen backlog per event
  loop step (CPython 3.11 `BaseSelectorEventLoop._accept_connection`): hundreds of thousands
  of tracebacks a minute. `AcceptErrorLimiter` writes one line per interval with a count.
- `Throttled` is the same rule for any repeated warning (connections over a limit): the first
  at once, then one per interval with a count.
- `set_nodelay` turns Nagle's algorithm off on an accepted TCP socket, so that each reply
  leaves at once instead of after the peer's delayed ACK (RFC 896; RFC 1122 §4.2.3.2).
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from filterd.config import Config
from filterd.logs import get_logger

_log = get_logger("filterd.net")

# Descriptors beyond the connection limits: stdio, the listening sockets, the event loop's
# selector and self-pipe, log files, DNS look-ups, and connections over a limit that are
# accepted only to be answered and closed at once.
DESCRIPTOR_MARGIN = 64
ACCEPT_ERROR_INTERVAL = 10.0  # seconds between two log lines about failing accept() calls
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class DescriptorLimitError(Exception):
    """The configured connection limits need more file descriptors than RLIMIT_NOFILE allows."""


@dataclass(frozen=True, slots=True)
class DescriptorBudget:
    parts: tuple[tuple[str, int], ...]  # (what, descriptors), e.g. ("proxy 2x100", 200)

    @property
    def total(self) -> int:
        return sum(count for _, count in self.parts) + DESCRIPTOR_MARGIN

    def explain(self) -> str:
        terms = [f"{what} = {count}" for what, count in self.parts]
        return " + ".join([*terms, f"margin {DESCRIPTOR_MARGIN}"])


def descriptor_budget(config: Config) -> DescriptorBudget:
    """Descriptors the configured endpoints may hold at their connection limits.

    With several workers each is checked with the whole max_connections: the limit counts
    the sessions of all workers (filterd/endpoints/inflight.py), and one worker may hold them
    all (the at most workers - 1 admitted at the same instant beyond it are in the margin).
    """
    parts: list[tuple[str, int]] = []
    if config.proxy.listen:
        # One for the client, one for the session's reinjection smtpd connection.
        limit = config.proxy.max_connections
        parts.append((f"proxy 2 x max_connections {limit}", 2 * limit))
    if config.milter.listen:
        limit = config.milter.max_connections
        parts.append((f"milter max_connections {limit}", limit))
    if parts:
        concurrent = config.clamd.max_concurrent
        parts.append((f"clamd max_concurrent {concurrent}", concurrent))
    return DescriptorBudget(tuple(parts))


def raise_descriptor_limit(budget: DescriptorBudget) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the limit now in force.

    Raises DescriptorLimitError when the budget does not fit even in the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):  # an unlimited hard limit may exceed fs.nr_open
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and budget.total > soft:
        msg = (
            f"the connection limits need {budget.total} file descriptors "
            f"({budget.explain()}), but RLIMIT_NOFILE allows {soft}; raise it "
            "(systemd LimitNOFILE=, ulimit -n) or lower [proxy] / [milter] max_connections"
        )
        raise DescriptorLimitError(msg)
    return int(soft)


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorLimiter:
    """A loop exception handler: accept() resource errors once per interval, the rest passed on.

    The first failure is logged at once; failures in the following `interval` seconds are
    only counted, and the count is logged when the interval ends (then the next interval
    starts counting, until one passes without failures).
    """

    def __init__(
        self, previous: ExceptionHandler | None = None, interval: float = ACCEPT_ERROR_INTERVAL
    ) -> None:
        self.previous = previous
        self.interval = interval
        self.suppressed = 0
        self.quiet = True  # no failure in the current interval yet
        self.timer: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _RESOURCE_ERRNOS
            and str(context.get("message", "")).startswith("socket.accept()")
        ):
            self.accept_failed(loop, exc, context.get("socket"))
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def accept_failed(self, loop: asyncio.AbstractEventLoop, exc: OSError, sock: Any) -> None:
        if not self.quiet:
            self.suppressed += 1
            return
        self.quiet = False
        _log.error(
            "accept failed: new connections wait in the listen queue",
            error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            listener=_sockname(sock),
            retry_seconds=1.0,  # asyncio's ACCEPT_RETRY_DELAY
        )
        self.timer = loop.call_later(self.interval, self.interval_ended, loop)

    def interval_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.suppressed:
            self.quiet = True
            self.timer = None
            return
        _log.error("accept still failing", failures=self.suppressed, seconds=self.interval)
        self.suppressed = 0
        self.timer = loop.call_later(self.interval, self.interval_ended, loop)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _sockname(sock: Any) -> str:
    try:
        name = sock.getsockname()
    except (AttributeError, OSError):
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)


def set_nodelay(sock: socket.socket | None) -> None:
    """TCP_NODELAY on a TCP socket; UNIX sockets (and no socket at all) are left alone.

    CPython's selector transports set it already (asyncio `base_events._set_nodelay`); the
    endpoints set it themselves so that their one-write replies do not rest on that detail.
    """
    tcp = tcp_socket(sock)
    if tcp is not None:
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tcp_socket(sock: socket.socket | None) -> socket.socket | None:
    """`sock` if it is a TCP socket (IPv4 or IPv6), else None (a UNIX socket, or none)."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        return sock
    return None


class Throttled:
    """A warning for a repeated event: the first at once, then at most one per interval,
    with the count of events since the last one (never one line per event)."""

    INTERVAL = 60.0

    def __init__(self, log: Any, message: str, **fields: object) -> None:
        self.log = log
        self.message = message
        self.fields = fields
        self.count = 0  # events not yet reported
        self.last = -self.INTERVAL

    def event(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.INTERVAL:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.count:
            self.log.warning(self.message, count=self.count, **self.fields)
            self.count = 0
            self.last = time.monotonic() if now is None else now
