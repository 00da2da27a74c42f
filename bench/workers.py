"""Messages per second with `[server] workers = 1` against `workers = 2`, through a real
Postfix, for the proxy and the milter endpoint.

    sudo .venv/bin/python -m bench.workers [--messages N] [--sessions 10,50] [--size BYTES]
                                           [--rounds R] [--modes proxy,milter]

Needs root, Postfix and clamd (as the test bed does). It starts one private clamd, and per
mode two filterd processes, one with each worker count, each behind its own private Postfix
(proxy: the master.cf.d/proxy.cf pair, front smtpd -> filterd -> reinjection smtpd; milter:
smtpd_milters). Postfix's smtp-source(1) sends N messages of BYTES, one per SMTP session,
over S parallel sessions; the contenders take turns within each round, so that a change in
the machine's load falls on both. Accepted mail goes to Postfix's discard(8) transport.
Prints the accepted msg/s of every run, the medians, the ratio 2 workers / 1 worker, and how
many cores filterd's processes used meanwhile (their CPU seconds / the run's seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

from bench.load import DISCARD, Startable, running, smtp_source
from bench.proxy import FilterdProxy
from tests.integration.milter_process import FilterdMilter
from tests.integration.proxy_chain import snippet_services
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port
from tests.testbed.postfix import Postfix

COUNTS = (1, 2)


def proxy_contenders(clamd: Clamd) -> list[tuple[int, Startable, Postfix]]:
    found: list[tuple[int, Startable, Postfix]] = []
    for count in COUNTS:
        listen, downstream = free_port(), free_port()
        filterd = FilterdProxy(listen, downstream, clamd.address)
        filterd.command += ["--workers", str(count)]
        postfix = Postfix("proxy", main_cf=DISCARD, services=snippet_services(),
                          filter_port=listen, downstream_port=downstream)  # fmt: skip
        found.append((count, filterd, postfix))
    return found


def milter_contenders(clamd: Clamd) -> list[tuple[int, Startable, Postfix]]:
    found: list[tuple[int, Startable, Postfix]] = []
    for count in COUNTS:
        listen = f"inet:127.0.0.1:{free_port()}"
        filterd = FilterdMilter(listen, clamd.address)
        filterd.command += ["--workers", str(count)]
        found.append((count, filterd, Postfix("milter", milter=listen, main_cf=DISCARD)))
    return found


def family(pid: int) -> list[int]:
    """`pid` and its children (a parent and its workers)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of filterd's processes, living ones only (proc(5) stat)."""
    total = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(mode: str, clamd: Clamd, args: argparse.Namespace) -> None:
    contenders = proxy_contenders(clamd) if mode == "proxy" else milter_contenders(clamd)
    things: list[Startable] = [
        thing for _, filterd, postfix in contenders for thing in (filterd, postfix)
    ]
    with running(*things):
        for _, _, postfix in contenders:
            smtp_source(postfix, 50, 5, args.size)  # warm-up: first connections and scans
        for sessions in args.sessions:
            rates: dict[int, list[float]] = {count: [] for count in COUNTS}
            cores: dict[int, list[float]] = {count: [] for count in COUNTS}
            for _ in range(args.rounds):
                for count, filterd, postfix in contenders:
                    pid = filterd.process.pid  # type: ignore[attr-defined]
                    before = cpu_seconds(pid)
                    elapsed = smtp_source(postfix, args.messages, sessions, args.size)
                    rates[count].append(args.messages / elapsed)
                    cores[count].append((cpu_seconds(pid) - before) / elapsed)
            report(mode, sessions, args, rates, cores)


def report(
    mode: str,
    sessions: int,
    args: argparse.Namespace,
    rates: dict[int, list[float]],
    cores: dict[int, list[float]],
) -> None:
    medians = {count: statistics.median(values) for count, values in rates.items()}
    print(f"{mode}, {args.size} bytes, C={sessions}, {args.messages} messages, "
          f"{args.rounds} rounds:")  # fmt: skip
    for count, values in rates.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        busy = statistics.median(cores[count])
        print(f"  workers = {count}: {medians[count]:7.1f} msg/s   (runs: {runs})   "
              f"filterd used {busy:.2f} cores")  # fmt: skip
    print(f"  ratio 2 / 1: {medians[2] / medians[1]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", default="10,50", help="comma-separated: one figure each")
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="proxy,milter")
    args = parser.parse_args()
    args.sessions = [int(word) for word in args.sessions.split(",")]
    if os.geteuid() != 0:
        sys.exit("bench.workers needs root (private Postfix instances)")
    print(f"cores this process may use: {len(os.sched_getaffinity(0))}")
    clamd = Clamd()
    with running(clamd):
        for mode in args.modes.split(","):
            measure(mode, clamd, args)


if __name__ == "__main__":
    main()
