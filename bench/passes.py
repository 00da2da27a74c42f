"""What one pass over 64 KiB of mail costs here: the unit the content path is priced in.

    .venv/bin/python -m bench.passes [--repeat N]

Each figure is the best of N timings of one operation on a 64 KiB block of the inspector
bench's clean mail (bench/inspector.py), in microseconds. A copy is a `memcpy`; a search
or a count walks every byte in Python's C code; a regular expression walks them in the
`re` engine. The inspector's clean path is a handful of these per block, so the number of
passes, not the number of copies, is what a message costs (docs/explanation/performance.md).
"""

from __future__ import annotations

import argparse
import re
import timeit
from collections.abc import Callable

from bench.inspector import clean_content

_CR_WITHOUT_LF = re.compile(rb"\r(?!\n)")


def block() -> bytes:
    data = clean_content(70_000)[: 64 * 1024]
    return data[: data.rfind(b"\r\n") + 2].replace(b"\r\n..", b"\r\n.x")  # no dot lines


def operations(data: bytes) -> dict[str, Callable[[], object]]:
    return {
        "copy (bytes of a bytearray)": lambda: bytes(bytearray(data)),
        "find one byte, absent (memchr)": lambda: data.find(b"\x00"),
        "count one byte (CR)": lambda: data.count(b"\r"),
        'count CRLF "."': lambda: data.count(b"\r\n."),
        "find <CRLF>.<CRLF>, absent": lambda: data.find(b"\r\n.\r\n"),
        'replace CRLF "." (none there)': lambda: data.replace(b"\r\n.", b"\r\n.."),
        "regex CR without LF, absent": lambda: _CR_WITHOUT_LF.search(data),
        "lower()": data.lower,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    data = block()
    print(f"one block of {len(data)} bytes, best of {args.repeat} x 200 runs")
    for name, operation in operations(data).items():
        best = min(timeit.repeat(operation, number=200, repeat=args.repeat)) / 200
        print(f"{best * 1e6:8.1f} us  {name}")


if __name__ == "__main__":
    main()
