"""Pure time accounting for the proxy: per-request deadlines, the minimum data rate, stress.

No I/O and no clock of its own: the session passes `now` (the event loop's time) in, so
every rule is a function of numbers and is table-tested (tests/endpoints/test_proxy_limits.py).

Postfix's model, which filterd follows (postconf(5), Postfix 3.7):
- smtpd_per_request_deadline: the time limit is a total for a complete request, not per
  read, so a client that trickles a command line one byte at a time still runs out of time;
- smtpd_min_data_rate: in DATA the deadline starts at the time limit, each read spends the
  time it waited and earns `bytes / min_data_rate` seconds, and it never grows beyond the
  time limit; a sender slower than the minimum rate always runs out;
- smtpd_timeout = ${stress?10}{300}: under stress (here: more sessions in flight than a
  fraction of max_connections) a waiting client gets the short limit.
"""

from __future__ import annotations

import math


def extend_data_deadline(
    deadline: float, now: float, received: int, min_rate: float, limit: float
) -> float:
    """The DATA deadline after a read of `received` bytes at `now`.

    Postfix: smtpd_min_data_rate. The time spent waiting is already gone (the deadline does not
    move for it); the bytes earn `received / min_rate` seconds; what is left never exceeds
    `limit` (data_timeout, Postfix's smtpd_timeout).
    """
    left = max(0.0, deadline - now) + received / min_rate
    return now + min(limit, left)


def under_stress(in_flight: int, max_connections: int, threshold: float) -> bool:
    """More sessions in flight than `threshold` (a fraction) of `max_connections`."""
    return in_flight > threshold * max_connections


def command_limit(normal: float, stressed_limit: float, *, stressed: bool) -> float:
    """Seconds a client may take for its next whole command line (smtpd_timeout, stress-aware)."""
    return min(normal, stressed_limit) if stressed else normal


def hurried_deadline(deadline: float, now: float, stressed_limit: float) -> float:
    """A waiting client's deadline once stress begins: never later than `now + stressed_limit`."""
    return min(deadline, now + stressed_limit)


def next_keepalive(last_io: float | None, interval: float) -> float:
    """When the idle downstream session is due a NOOP; infinity when there is none."""
    return math.inf if last_io is None else last_io + interval
