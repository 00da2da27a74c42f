"""How many workers, and what each may use of a budget that is shared by all of them.

A worker is a whole filterd with its own limits, so a limit that guards one resource of the
host would be N times too large if each took all of it (docs/explanation/design.md, "All
cores", says why each rule is the right one):
- `[clamd] max_concurrent`: clamd's MaxThreads is one pool for every client; the workers' slots
  add up to the setting exactly (the first ones get the remainder), at least 1 each;
- `[server] max_buffered_bytes`: memory is the host's; divided, but never below
  `[filter] max_message_size` (a message of the allowed size must fit in one worker);
- `[proxy]` / `[milter] max_connections` (and the proxy's stress threshold, a fraction of
  it) are NOT divided: every worker gets the whole setting and counts the sessions of all
  workers against it (filterd/endpoints/inflight.py), since the kernel spreads connections by
  hash, not by load, and one worker may hold most of them;
- file descriptors: RLIMIT_NOFILE is per process, so each worker is checked with its share,
  which for the connections is the whole max_connections (one worker may hold them all).
"""

from __future__ import annotations

import dataclasses
import os

from filterd.config import Config


def cores() -> int:
    """The CPUs this process may run on (taskset, systemd CPUAffinity=), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(config: Config) -> int:
    """`[server] workers`, with 0 read as one per core, but no more than clamd.max_concurrent:
    every worker needs a clamd slot of its own, so the default never asks clamd for more
    scans at once than max_concurrent (and its MaxThreads check) allows."""
    return config.server.workers or max(1, min(cores(), config.clamd.max_concurrent))


def split(total: int, count: int, index: int) -> int:
    """Worker `index`'s (0-based) part of `total`: the parts add up to `total`, the first
    ones take the remainder, and none is below 1."""
    base, extra = divmod(total, count)
    return max(1, base + (1 if index < extra else 0))


def share(config: Config, index: int, count: int) -> Config:
    """The configuration worker `index` (0-based) of `count` runs with."""
    if count == 1:
        return config
    clamd = dataclasses.replace(
        config.clamd, max_concurrent=split(config.clamd.max_concurrent, count, index)
    )
    buffered = max(config.server.max_buffered_bytes // count, config.filter.max_message_size)
    server = dataclasses.replace(config.server, max_buffered_bytes=buffered)
    return dataclasses.replace(config, clamd=clamd, server=server)


def overcommitted(config: Config, count: int) -> list[str]:
    """The budgets that the workers' shares exceed, as warnings to log at start."""
    found = []
    if count > config.clamd.max_concurrent:
        found.append(
            f"clamd.max_concurrent {config.clamd.max_concurrent} is below the {count} "
            f"workers: each gets 1 scan slot, {count} in all; raise clamd's MaxThreads to match"
        )
    if config.server.max_buffered_bytes // count < config.filter.max_message_size:
        total = count * config.filter.max_message_size
        found.append(
            f"server.max_buffered_bytes / {count} workers is below filter.max_message_size: "
            f"each worker may buffer one message of that size, {total} bytes in all"
        )
    return found
