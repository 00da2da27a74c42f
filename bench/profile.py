"""Where filterd's time goes: a py-spy raw profile summed by the code that spent it.

    .venv/bin/python -m bench.profile FILE [--top N] [--areas]

FILE is what `bench.proxy --profile FILE` or `bench.milter --profile FILE` wrote (py-spy
`record --format raw --idle`: one line per distinct stack, "frame;frame;... count"). Each
sample is charged to the innermost frame that is filterd's own code or a library it calls
(purepythonmilter, structlog), so time spent in the standard library on filterd's behalf
(`bytes.replace` has no frame; `re` and `asyncio.streams` do) counts for filterd's caller.
Samples with no such frame are the event loop itself: waiting in `select` (idle) or running
its own machinery (callbacks, transports, timers). Figures are shares of all samples and of
the busy ones.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# py-spy raw frames: "function (path/to/file.py:line)" (the line may be missing).
_FRAME = re.compile(r"(?P<function>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")
_OWN = ("filterd/", "purepythonmilter/", "structlog/")


def owner(stack: str) -> str:
    """The name a sample is charged to: `module.function` of its innermost own frame."""
    frames = stack.split(";")
    # Only frames below the event loop's own run a task or callback for filterd.
    loop = [i for i, frame in enumerate(frames) if "_run_once (" in frame or "._run (" in frame]
    for frame in reversed(frames[loop[-1] + 1 :] if loop else frames):
        match = _FRAME.match(frame.strip())
        if match is None:
            continue
        file = "/" + match["file"]
        for marker in _OWN:
            if "/" + marker in file:
                module = file.split("/" + marker, 1)[1].removesuffix(".py").replace("/", ".")
                return f"{marker.strip('/')}.{module}.{match['function']}"
    leaf = _FRAME.match(frames[-1].strip())
    if leaf is not None and leaf["function"].endswith(("select", "poll")):
        return "(idle: waiting for I/O)"
    return "(event loop and standard library)"


# `--areas`: each sample charged to the first area (in this order) any frame of its stack
# belongs to; a fixed-cost breakdown (docs/explanation/performance.md).
AREAS = (
    ("writes to the reinjection smtpd", ("Downstream._write",)),
    ("replies to the client / answers to the MTA", ("Connection.send", "MilterConnection.send")),
    ("reads from the reinjection smtpd", ("Downstream.",)),
    ("clamd client (connect, send, reply)", ("filterd/scan/",)),
    ("logging (structlog, the stdlib logging path)", ("structlog/", "logging/__init__")),
    ("metrics", ("prometheus_client/", "filterd/metrics.py")),
    # attrs-generated __init__ frames are named after the class, not the file.
    ("purepythonmilter (command objects, its loggers)", ("purepythonmilter/", "purepythonmilter.")),
    ("timers (asyncio.timeout, wait_for)", ("asyncio/timeouts.py", "wait_for (")),
    ("SMTP commands and state machine", ("filterd/core/smtp/",)),
    ("content (inspector, traces, message core)", ("filterd/core/",)),
    # The loop's own callback finishing a non-blocking connect (clamd, reinjection smtpd).
    ("connects (clamd, the reinjection smtpd)", ("_sock_connect",)),
)


def area(stack: str) -> str:
    """The AREAS name a sample belongs to; idle; else the rest of filterd and the loop."""
    for name, markers in AREAS:
        if any(marker in stack for marker in markers):
            return name
    if owner(stack).startswith("(idle"):
        return "(idle: waiting for I/O)"
    return "(the rest: sessions, event loop, transports, accept, close)"


def summarise(path: Path, *, areas: bool = False) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[area(stack) if areas else owner(stack)] += int(count)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--areas", action="store_true", help="sum by area, not by function")
    args = parser.parse_args()
    counts = summarise(args.file, areas=args.areas)
    total = sum(counts.values())
    busy = total - counts["(idle: waiting for I/O)"]
    print(f"{total} samples, {busy} busy ({busy / max(total, 1):.0%})")
    print(f"{'share':>6} {'of busy':>8}  charged to")
    for name, count in counts.most_common(args.top):
        of_busy = "" if name.startswith("(idle") else f"{count / max(busy, 1):8.1%}"
        print(f"{count / max(total, 1):6.1%} {of_busy:>8}  {name}")


if __name__ == "__main__":
    main()
