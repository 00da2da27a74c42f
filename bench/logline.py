"""What one canonical log line costs: filterd's logging set-up, JSON, to /dev/null.

    .venv/bin/python -m bench.logline [--lines N] [--repeat R]

Times `Pipeline.log`'s call (`info("message", **fields)`, the fields of a proxy message
that was accepted) through filterd.logs.configure("json"): structlog's processors, the
standard library's handler and structlog's formatter, JSON rendering, one write. Also a
filtered-out debug call and the bare json.dumps and write of the same fields, for scale.
CPU time of this process (time.process_time), best of R rounds of N lines.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from filterd import logs

FIELDS: dict[str, object] = {
    "endpoint": "proxy", "action": "accept", "reply": "250 2.0.0 Ok", "reason": "accepted",
    "client": "192.0.2.7", "sender": "sender@example.test", "recipients": 1, "size": 10240,
    "bypass": None, "trace": None, "trace_line": None, "findings": [], "scan_time": 0.0012,
    "virus": None, "scan_error": None, "elapsed": 0.0031, "error": None,
    "downstream_reply": "2.0.0 Ok: queued as 4Xyz1234", "final_dot_sent": None,
    "queue_id": "4Xyz1234", "answer": "250 2.0.0 Ok: queued as 4Xyz1234", "session": 17,
    "client_name": "mail.example.test", "refused_recipients": 0,
}  # fmt: skip


def best(call: Callable[[], None], lines: int, repeat: int) -> float:
    """Microseconds of CPU per call, best of `repeat` rounds of `lines` calls."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(lines):
            call()
        times.append((time.process_time() - started) / lines * 1e6)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with open(os.devnull, "w") as out:  # noqa: PTH123 (a text stream for the handler)
        logs.configure("json", "info", out)
        log = logs.get_logger("filterd.pipeline")

        def bare() -> None:
            out.write(json.dumps(FIELDS) + "\n")
            out.flush()

        figures = {
            "canonical line (info)": best(lambda: log.info("message", **FIELDS), args.lines,
                                          args.repeat),
            "filtered debug call": best(lambda: log.debug("message", **FIELDS), args.lines,
                                        args.repeat),
            "bare json.dumps + write": best(bare, args.lines, args.repeat),
        }  # fmt: skip
        logs.reset()
    for name, micros in figures.items():
        print(f"{name:>24}: {micros:6.1f} us CPU")


if __name__ == "__main__":
    main()
