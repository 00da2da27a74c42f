"""CPU per message through the proxy, for several filterd builds in one run window, interleaved.

    sudo .venv/bin/python -m bench.proxy_reuse --filterd OLD/.venv/bin/filterd \\
        --filterd .venv/bin/filterd [--size 10000] [--messages 1000] [--sessions 10] [--rounds 3]

For comparing a change with the code before it (a second git worktree with its own
bootstrap) on a loaded machine, where msg/s move a lot but CPU per message much less. One
private clamd and one private Postfix with the master.cf.d/proxy.cf services (accepted mail
discarded); each round starts each filterd in turn on the same port (`serve --proxy
--workers 1`, default settings otherwise), warms it up, and has smtp-source(1) send N
messages of SIZE bytes, one per SMTP session, from S parallel sessions. Per build and round
it prints msg/s, filterd's CPU ms per message (its /proc/PID/stat), Postfix's CPU ms per
message (master(8) and every child: both smtpd services, cleanup, ...), and the reinjection
smtpd's connections per message (its "connect from" lines in the maillog); then medians.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import cpu_seconds, proxy_postfix, running, smtp_source
from bench.peers.measure import cpu_seconds as tree_cpu_seconds
from bench.proxy import FilterdProxy
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port
from tests.testbed.postfix import Postfix

REINJECT_CONNECT = re.compile(r"postfix/reinject/smtpd\[\d+\]: connect from ")


@dataclass
class Figures:
    rate: list[float] = field(default_factory=list)  # msg/s
    filterd_ms: list[float] = field(default_factory=list)  # CPU ms per message
    postfix_ms: list[float] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)  # reinjection connections per message


class Build(FilterdProxy):
    """`filterd serve --proxy` of one build (its own virtual environment's filterd)."""

    def __init__(self, executable: str, port: int, downstream: int, clamd: str) -> None:
        super().__init__(port, downstream, clamd)
        self.command[0] = executable


def postfix_pid(postfix: Postfix) -> int:
    return int((postfix.queue_directory / "pid" / "master.pid").read_text().split()[0])


def measure(build: Build, postfix: Postfix, args: argparse.Namespace, into: Figures) -> None:
    with running(build):  # a new process (and directory) each round
        smtp_source(postfix, 20, 5, args.size)  # warm-up: first connections and scans
        pid = build.process.pid if build.process else None
        master = postfix_pid(postfix)
        log_before = len(postfix.log_text())
        filterd_before, postfix_before = cpu_seconds(pid), tree_cpu_seconds([master])
        elapsed = smtp_source(postfix, args.messages, args.sessions, args.size)
        filterd_used = cpu_seconds(pid) - filterd_before
        postfix_used = tree_cpu_seconds([master]) - postfix_before
    connects = len(REINJECT_CONNECT.findall(postfix.log_text()[log_before:]))
    into.rate.append(args.messages / elapsed)
    into.filterd_ms.append(filterd_used * 1000 / args.messages)
    into.postfix_ms.append(postfix_used * 1000 / args.messages)
    into.connects.append(connects / args.messages)


def show(name: str, figures: Figures, index: int | None = None) -> str:
    def pick(values: list[float]) -> float:
        return statistics.median(values) if index is None else values[index]

    return (
        f"{name:>40}: {pick(figures.rate):7.1f} msg/s  filterd {pick(figures.filterd_ms):6.2f} ms"
        f"  Postfix {pick(figures.postfix_ms):6.2f} ms  reinject connects/msg "
        f"{pick(figures.connects):5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--filterd", action="append", required=True, help="a filterd executable")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.proxy_reuse needs root (a private Postfix instance)")
    clamd = Clamd()
    filter_port, downstream_port = free_port(), free_port()
    postfix = proxy_postfix(filter_port, downstream_port)
    figures = {path: Figures() for path in args.filterd}
    print(
        f"{args.messages} messages of {args.size} bytes, {args.sessions} parallel sessions, "
        f"one message per session; CPU per message; {args.rounds} rounds, interleaved"
    )
    with running(clamd, postfix):
        for round_number in range(args.rounds):
            for path in args.filterd:
                build = Build(path, filter_port, downstream_port, clamd.address)
                measure(build, postfix, args, figures[path])
                print(f"round {round_number + 1} " + show(short(path), figures[path], -1))
    for path in args.filterd:
        print("median  " + show(short(path), figures[path]))


def short(path: str) -> str:
    """The worktree of a build's executable (.../WORKTREE/.venv/bin/filterd)."""
    parts = Path(path).resolve().parts
    return parts[-4] if len(parts) >= 4 else path


if __name__ == "__main__":
    main()
