"""What one canonical log line costs: filterd's logging set-up, JSON, to /dev/null.

    .venv/bin/python -m bench.logline [--lines N] [--repeat R] [--compare]

Times `Pipeline.log`'s call (`info("message", **fields)`, the fields of a proxy message
that was accepted) through filterd.logs.configure("json"): structlog's processors, JSON
rendering, the handler's lock and one write (filterd.logs.LineLogger). Also a filtered-out
debug call and the bare json.dumps and write of the same fields, for scale. With
`--compare`, in the same run: the same call through the standard library's record path
filterd took before session 4 (a LogRecord per line, structlog's ProcessorFormatter), and
a purepythonmilter debug call dropped at its level (a LoggerAdapter, as its commands log
while decoding).
CPU time of this process (time.process_time), best of R rounds of N lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable

import structlog

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


def stdlib_path() -> None:
    """filterd's own events through a LogRecord and the handler's ProcessorFormatter, as
    before session 4 (the handlers `configure` installed render them the same way)."""
    processors = structlog.get_config()["processors"]
    structlog.configure(
        processors=[*processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--compare", action="store_true", help="also the stdlib path")
    args = parser.parse_args()
    with open(os.devnull, "w") as out:  # noqa: PTH123 (a text stream for the handler)
        logs.configure("json", "info", out)
        log = logs.get_logger("filterd.pipeline")
        milter = logging.LoggerAdapter(logging.getLogger("purepythonmilter.protocol.commands"))

        def bare() -> None:
            out.write(json.dumps(FIELDS) + "\n")
            out.flush()

        def line() -> None:
            log.info("message", **FIELDS)

        figures = {"canonical line (info)": best(line, args.lines, args.repeat)}
        if args.compare:
            stdlib_path()
            figures["same, stdlib record path"] = best(line, args.lines, args.repeat)
            logs.configure("json", "info", out)
        figures["filtered debug call"] = best(
            lambda: log.debug("message", **FIELDS), args.lines, args.repeat
        )
        if args.compare:
            figures["dropped milter debug"] = best(
                lambda: milter.debug("Got command x"), args.lines, args.repeat
            )
        figures["bare json.dumps + write"] = best(bare, args.lines, args.repeat)
        logs.reset()
    for name, micros in figures.items():
        print(f"{name:>24}: {micros:6.1f} us CPU")


if __name__ == "__main__":
    main()
