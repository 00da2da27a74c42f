"""asyncio's event loop against uvloop: filterd's CPU per message, the two runs interleaved.

    sudo .venv/bin/python -m bench.uvloop.compare [--rounds 3] [--shape proxy-10k ...]

Each round runs every shape once per loop, the two loops in turn (their order swapped every
round), each run one `bench.proxy` or `bench.milter` process with `--repeat 1`: its own
private clamd and Postfix, one `filterd serve --workers 1`, whose CPU per message it prints.
The loop is chosen for that filterd process through PYTHONPATH, with no change to filterd:
- asyncio: bench/uvloop/off hides uvloop, so nothing in the process can run on it;
- uvloop: bench/uvloop installs uvloop's event loop policy, so `asyncio.run()` runs on it.
The table gives, per shape, the median filterd CPU ms per message of each loop with its
runs, the change of the medians, the median of the rounds' own changes (each round's two
runs are neighbours in time), and the median msg/s (noise on a shared machine: compare the
CPU).
It measures the tree it is in (run from its root, PYTHONPATH set to it); it needs uvloop in
the virtual environment (`.venv/bin/pip install uvloop`: no dependency of filterd).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# id: (label, bench module, its arguments)
SHAPES = {
    "proxy-10k": ("proxy, 10 KB", "bench.proxy", "600", "10000"),
    "milter-10k": ("milter, 10 KB", "bench.milter", "600", "10000"),
    "proxy-1m": ("proxy, 1 MB", "bench.proxy", "100", "1000000"),
    "milter-1m": ("milter, 1 MB", "bench.milter", "100", "1000000"),
}
LOOPS = {"asyncio": ROOT / "bench" / "uvloop" / "off", "uvloop": ROOT / "bench" / "uvloop"}

_CPU = re.compile(r"filterd CPU:\s+([\d.]+) ms per message")
_RATE = re.compile(r"filterd (?:proxy|milter):\s+([\d.]+) msg/s")
_ERRORS = re.compile(r"(\d+) (?:warnings/)?errors logged")


@dataclass
class Figures:
    cpu: list[float] = field(default_factory=list)  # ms per message, one a run
    rate: list[float] = field(default_factory=list)  # msg/s, one a run
    errors: int = 0  # warnings and errors filterd logged, all runs


def command(shape: str) -> list[str]:
    _, module, messages, size = SHAPES[shape]
    args = [sys.executable, "-m", module, "--messages", messages, "--size", size]
    args += ["--repeat", "1"]
    if module == "bench.proxy":
        args += ["--latency-messages", "5"]
    return args


def run_once(shape: str, loop: str, figures: Figures) -> None:
    path = os.pathsep.join([str(ROOT), str(LOOPS[loop])])
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(  # noqa: S603 (fixed argument list)
        command(shape), cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    cpu, rate = _CPU.search(done.stdout), _RATE.search(done.stdout)
    if done.returncode != 0 or cpu is None or rate is None:
        sys.exit(f"{shape} on {loop} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    figures.cpu.append(float(cpu.group(1)))
    figures.rate.append(float(rate.group(1)))
    errors = _ERRORS.search(done.stdout)
    figures.errors += int(errors.group(1)) if errors else 0
    print(f"  {shape} {loop}: {cpu.group(1)} ms per message, {rate.group(1)} msg/s", flush=True)


def paired(base: list[float], other: list[float]) -> float:
    """The median of each round's change: the two runs of a round ran one after the other,
    under much the same load from the rest of the machine."""
    return statistics.median((b - a) / a for a, b in zip(base, other, strict=True))


def table(results: dict[str, dict[str, Figures]]) -> None:
    print("| shape | filterd CPU ms per message, asyncio (runs) | uvloop (runs) | change |"
          " paired change | msg/s, asyncio | uvloop |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape, loops in results.items():
        base, other = loops["asyncio"], loops["uvloop"]
        before, after = statistics.median(base.cpu), statistics.median(other.cpu)
        cells = [
            SHAPES[shape][0],
            f"{before:.2f} ({', '.join(f'{c:.2f}' for c in base.cpu)})",
            f"{after:.2f} ({', '.join(f'{c:.2f}' for c in other.cpu)})",
            f"{(after - before) / before:+.0%}",
            f"{paired(base.cpu, other.cpu):+.0%}",
            f"{statistics.median(base.rate):.1f}",
            f"{statistics.median(other.rate):.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    for shape, loops in results.items():
        for loop, figures in loops.items():
            if figures.errors:
                print(f"{shape} on {loop}: filterd logged {figures.errors} warnings/errors")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", action="append", choices=list(SHAPES), help="default: all")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.uvloop.compare needs root (the benches start private Postfix)")
    if importlib.util.find_spec("uvloop") is None:
        sys.exit("uvloop is not installed: .venv/bin/pip install uvloop")
    shapes = args.shape or list(SHAPES)
    results = {shape: {loop: Figures() for loop in LOOPS} for shape in shapes}
    for number in range(args.rounds):
        print(f"round {number + 1} of {args.rounds}", flush=True)
        order = list(LOOPS) if number % 2 == 0 else list(reversed(LOOPS))
        for shape in shapes:
            for loop in order:
                run_once(shape, loop, results[shape][loop])
    table(results)


if __name__ == "__main__":
    main()
