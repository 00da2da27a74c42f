"""Throughput of the content inspector and the worst single call, on clean and hostile content.

    .venv/bin/python -m bench.inspector [--repeat N] [--shapes] [--cpu]

Two tables. The first: MB/s on clean and on dense adversarial content at three sizes (the
time staying flat as the size grows shows it is linear). The second (`--shapes` prints only
it): for each hostile shape of 10 MB that an attacker can send through Postfix or a raw milter
client, the MB/s and the worst single call, which is how long one event-loop step can stall
another client. Every figure is the median of N runs, with the content fed to a `Transaction`
in 64 KiB chunks as an endpoint reads it (traces on, as by default); the end step
(`finish()`) counts as a call. The figures before the core bounded its work come from the same
script at commit f3f28e6, whose end step also ran the milter's whole-content trace scan.
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import time
from collections.abc import Callable

from filterd.core import Framing, Policy, Transaction

CHUNK = 64 * 1024
SIZES = [10_000, 1_000_000, 10_000_000]
SHAPE_SIZE = 10_000_000


def clean_content(size: int) -> bytes:
    rng = random.Random(1)
    header = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n"
    lines = [header]
    total = len(header)
    while total < size:
        kind = rng.random()
        if kind < 0.6:
            line = base64.b64encode(rng.randbytes(57)) + b"\r\n"
        elif kind < 0.95:
            line = b"Some ordinary text of a mail message, about seventy characters.\r\n"
        else:
            line = b"..a line that started with a dot\r\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size].rsplit(b"\r\n", 1)[0] + b"\r\n.\r\n"


def adversarial_content(size: int) -> bytes:
    rng = random.Random(2)
    atoms = [b"\r", b"\n", b".", b"\r\n", b"\x00", b"\n.\n", b"\r.\r", b"x"]
    parts, total = [], 0
    while total < size:
        atom = rng.choice(atoms)
        parts.append(atom)
        total += len(atom)
    data = b"".join(parts)
    while b"\r\n.\r\n" in data:  # a real terminator would end the benchmark early
        data = data.replace(b"\r\n.\r\n", b"\r\n..\r\n")
    return data + b"\r\n.\r\n"


def no_crlf_mix(size: int) -> bytes:
    """Issue 9 (a): dots, CRs and NULs with no CRLF at all; it passes Postfix unchanged."""
    unit = b"\r.\x00\r\x00."
    return unit * (size // len(unit)) + b"\r\n.\r\n"


def empty_lines(size: int) -> bytes:
    """Issue 9 (b): one RCPT line, then millions of empty lines (clean content)."""
    first = b"RCPT TO:<x@y>\r\n"
    return first + b"\r\n" * ((size - len(first)) // 2)


def milter_no_lf(size: int) -> bytes:
    """Issue 9 (c): a message from a raw milter client, "." segments framed by CR, no LF."""
    unit = b"\r.\x00\r\x00."
    return unit * (size // len(unit))


# (name, framing, content maker)
SHAPES: list[tuple[str, Framing, Callable[[int], bytes]]] = [
    ("clean", Framing.SMTP_DATA, clean_content),
    ("adversarial", Framing.SMTP_DATA, adversarial_content),
    ("no-crlf-mix", Framing.SMTP_DATA, no_crlf_mix),
    ("empty-lines", Framing.MESSAGE, empty_lines),
    ("milter-no-lf", Framing.MESSAGE, milter_no_lf),
]


def _end_step(txn: Transaction, framing: Framing) -> None:
    if framing is Framing.MESSAGE:
        txn.finish()
    if not txn.done:
        raise SystemExit("benchmark content did not end at its last byte: generator is wrong")
    # The trace is found while the content is fed (txn.trace); at f3f28e6 the milter still
    # scanned the whole content here, with traces.find_command_sequence().


def run_once(
    data: bytes, framing: Framing, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """(total seconds, worst single call in seconds) for one message in 64 KiB feeds."""
    txn = Transaction(Policy(max_message_size=len(data) * 2), framing)
    worst = total = 0.0
    for offset in range(0, len(data), CHUNK):
        start = clock()
        txn.feed(data[offset : offset + CHUNK])
        took = clock() - start
        worst, total = max(worst, took), total + took
    start = clock()
    _end_step(txn, framing)
    took = clock() - start
    if txn.inspector.trailing:
        raise SystemExit("benchmark content did not end at its last byte: generator is wrong")
    return total + took, max(worst, took)


def measure(
    data: bytes, framing: Framing, repeat: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """(median MB/s, median worst call in ms)."""
    runs = [run_once(data, framing, clock) for _ in range(repeat)]
    seconds = statistics.median(run[0] for run in runs)
    worst = statistics.median(run[1] for run in runs)
    return len(data) / seconds / 1e6, worst * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--shapes", action="store_true", help="only the hostile shapes table")
    parser.add_argument(
        "--cpu", action="store_true", help="time this thread's CPU, not the wall clock"
    )
    args = parser.parse_args()
    # On a shared machine the wall clock counts time other processes had the core.
    clock = time.thread_time if args.cpu else time.perf_counter
    if not args.shapes:
        print(f"{'content':<12} {'size':>12} {'MB/s':>10}")
        makers: list[tuple[str, Callable[[int], bytes]]] = [
            ("clean", clean_content),
            ("adversarial", adversarial_content),
        ]
        for name, make in makers:
            for size in SIZES:
                figure, _ = measure(make(size), Framing.SMTP_DATA, args.repeat, clock)
                print(f"{name:<12} {size:>12,} {figure:>10.1f}")
        print()
    print(f"{'shape (10 MB)':<14} {'framing':<10} {'MB/s':>8} {'worst call ms':>14}")
    for name, framing, make in SHAPES:
        mb_per_s, worst_ms = measure(make(SHAPE_SIZE), framing, args.repeat, clock)
        print(f"{name:<14} {framing.value:<10} {mb_per_s:>8.1f} {worst_ms:>14.1f}")


if __name__ == "__main__":
    main()
