"""The rate lines the milter and proxy benches print: each contender's median rate with its
runs, the ratio of the filtered one to the plain one, and filterd's CPU time per message."""

from __future__ import annotations

import statistics


def print_rates(
    rates: dict[str, list[float]], cpu: list[float], *, filtered: str, plain: str
) -> None:
    """Print the median of each contender's `rates` (msg/s), `filtered` over `plain`, and the
    median of `cpu` (filterd's CPU seconds per message, one figure a run)."""
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        runs = ", ".join(f"{v:.0f}" for v in rates[name])
        print(f"{name:>15}: {value:7.1f} msg/s   (runs: {runs})")
    print(f"{'ratio':>15}: {medians[filtered] / medians[plain]:7.2f}")
    runs = ", ".join(f"{c * 1000:.2f}" for c in cpu)
    per_message = statistics.median(cpu) * 1000
    print(f"{'filterd CPU':>15}: {per_message:7.2f} ms per message   (runs: {runs})")
