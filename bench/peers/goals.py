"""What stands in the way of issue 12's goals, from the bench's own CPU figures.

Every message costs CPU in Postfix, clamd, smtp-source and smtp-sink besides the filter.
With `cores` cores and nothing else running, no contender can go faster than
cores / (those others' CPU seconds per message): the ceiling a filter that cost nothing
would reach. To reach a goal of G msg/s the filter may then cost at most
cores / G - others per message; when that is <= 0 no filter can reach G on these cores.
Both are upper bounds: they assume every core kept busy, which holds only when the run is
CPU-bound; below that, waiting (latency), not CPU, is what limits the rate, unless other
programs on the machine took the cores the bench did not use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

# A run that kept at least this share of the cores busy is called CPU-bound: /proc counts
# in clock ticks and the bench's own polling is not counted, so "all cores" is never 1.00.
SATURATED: Final = 0.9


def machine_cpus() -> set[int]:
    """The cores this process may run on (its affinity mask), else all of the machine's."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def ceiling(cores: int, others_per_message: float) -> float:
    """msg/s a filter that cost nothing could reach: cores / others' CPU s per message."""
    return cores / others_per_message if others_per_message > 0 else float("inf")


def needed_filter_cpu(cores: int, goal_rate: float, others_per_message: float) -> float:
    """The filter CPU seconds per message that would still allow `goal_rate` msg/s on
    `cores` cores: cores / goal - others (<= 0: out of reach for any filter)."""
    return cores / goal_rate - others_per_message


def bound(cores_used: float, cores: int, machine_used: float | None = None) -> str:
    """What limits a run: "CPU" when the bench's programs kept (nearly) every core busy;
    "CPU, shared" when they did not but the whole machine was (other load took the rest);
    else "latency"."""
    if cores_used >= SATURATED * cores:
        return "CPU"
    if machine_used is not None and machine_used >= SATURATED * cores:
        return "CPU, shared"
    return "latency"


@dataclass(frozen=True)
class Need:
    """One goal for one filterd contender at one load, with what it would take."""

    goal: str  # "filterd milter >= 2.0x clamav-milter"
    goal_rate: float  # msg/s
    rate: float  # filterd's measured msg/s
    filter_cpu: float  # filterd's measured CPU s per message
    others: float  # Postfix + clamd + smtp-source + smtp-sink CPU s per message
    cores: int
    cores_used: float  # every measured program's CPU per second of the run
    machine_used: float  # the same for the bench's cores, whoever kept them busy

    @property
    def needed(self) -> float:
        return needed_filter_cpu(self.cores, self.goal_rate, self.others)

    def verdict(self) -> str:
        if self.rate >= self.goal_rate:
            return "met"
        if self.needed <= 0:
            return f"out of reach for any filter on {self.cores} cores"
        if self.filter_cpu <= self.needed:
            if bound(self.cores_used, self.cores, self.machine_used) == "CPU, shared":
                return "CPU would allow it on an idle machine: other load took the cores"
            return "CPU would allow it: the limit is latency"
        return f"filter CPU {self.filter_cpu / self.needed:.1f}x too high"
