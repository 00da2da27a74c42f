"""Throughput of the content inspector, in MB/s, on clean and on adversarial content.

    .venv/bin/python -m bench.inspector [--repeat N]

Clean content is mail-like: headers, 76-column base64 lines, text lines, some lines starting
with "." (dot-stuffed, as on the wire). Adversarial content is dense runs of CR, LF, "." and
NUL, the slow path's worst case; its MB/s staying flat as the size grows shows the time is
linear. Each figure is the median of N runs, with the content fed in 64 KiB chunks as an
endpoint reads it.
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import time

from filterd.core import BareNewline, ContentInspector

CHUNK = 64 * 1024
SIZES = [10_000, 1_000_000, 10_000_000]


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


def run_once(data: bytes) -> float:
    inspector = ContentInspector(BareNewline.NORMALIZE, max_size=len(data) * 2)
    start = time.perf_counter()
    for offset in range(0, len(data), CHUNK):
        inspector.feed(data[offset : offset + CHUNK])
    elapsed = time.perf_counter() - start
    if not inspector.done or inspector.trailing:
        raise SystemExit("benchmark content did not end at its last byte: generator is wrong")
    return elapsed


def median_mb_per_s(data: bytes, repeat: int) -> float:
    times = [run_once(data) for _ in range(repeat)]
    return len(data) / statistics.median(times) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (median)")
    args = parser.parse_args()
    print(f"{'content':<12} {'size':>12} {'MB/s':>10}")
    for name, make in [("clean", clean_content), ("adversarial", adversarial_content)]:
        for size in SIZES:
            figure = median_mb_per_s(make(size), args.repeat)
            print(f"{name:<12} {size:>12,} {figure:>10.1f}")


if __name__ == "__main__":
    main()
