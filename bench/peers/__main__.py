"""filterd against its peers: accepted msg/s through one private Postfix, side by side.

    sudo bench/peers-install [--rspamd]       # once: the peers, from Debian, no service started
    sudo .venv/bin/python -m bench.peers [--rounds R] [--rspamd] [--quick]

Contenders, each behind its own front smtpd of ONE private Postfix 3.7 (bench/peers/layout.py)
with one private clamd behind every filter, and delivery to one smtp-sink(1):
plain Postfix (no filter: the ceiling), filterd proxy, clamsmtpd (proxy), filterd milter,
clamav-milter, and with --rspamd rspamd (milter, antivirus only). filterd is one
`filterd serve --proxy ... --milter ...` process. A peer that is not installed is skipped
(bench/peers-install installs them); filterd and plain Postfix always run.

Loads: 10 KB over 10 sessions, 1 MB over 10 sessions, 10 KB over 50 sessions, smtp-source(1)
with one message per SMTP session. Interleaved: each round runs every contender in turn, and
a run starts only once Postfix delivered everything of the previous one. Per contender it
prints the median accepted msg/s over the rounds, the filter's CPU (its process and its
children, every thread, from /proc) per message and as cores kept busy, the CPU per
message of clamd, Postfix, smtp-source and smtp-sink (the others: what a filter that cost
nothing would still cost), the cores every measured program kept busy, the ceiling
cores / others per message, the ratios of filterd to each peer and to plain Postfix with
issue 12's goals, and what each goal needs: the filter CPU per message that would still
allow it on this machine's cores (bench/peers/goals.py). The front smtpd's warnings say who
refused a session; --maillog keeps a copy of the private Postfix's maillog. Each run is
reconciled from the maillog and smtp-sink's counter: sessions the front smtpd logged =
messages sent; messages it accepted = messages queued = messages delivered once each =
messages smtp-sink received. It exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from bench.load import running
from bench.peers.goals import Need, bound, ceiling, machine_cpus
from bench.peers.layout import Front, one_postfix
from bench.peers.measure import (
    Delivery,
    Sent,
    Shape,
    cpu_seconds,
    idle_seconds,
    problems,
    smtp_source,
)
from bench.peers.processes import (
    CLAMAV_MILTER,
    CLAMSMTPD,
    RSPAMD,
    ChildProcess,
    ClamavMilter,
    Clamsmtp,
    SmtpSink,
    greets,
)
from bench.peers.rspamd import Rspamd
from bench.peers.virus import virus_verdict
from bench.serve import FilterdServe, Ports
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port, wait_until
from tests.testbed.postfix import Postfix

FULL = (Shape(10_000, 10, 500), Shape(1_000_000, 10, 100), Shape(10_000, 50, 500))
QUICK = (Shape(10_000, 10, 20), Shape(1_000_000, 10, 10), Shape(10_000, 50, 50))
WARM_UP = Shape(10_000, 5, 20)
SETTLE_SECONDS = 120  # at most this long for Postfix to deliver one run's mail
CPUS = machine_cpus()  # the cores the bench and everything it starts may run on

# Issue 12's goals: (numerator, denominator, at least, shapes it holds for: None = every).
GOALS = (
    ("filterd proxy", "clamsmtpd", 2.0, None),
    ("filterd milter", "clamav-milter", 2.0, None),
    ("filterd milter", "rspamd", 1.5, None),
    ("filterd proxy", "plain Postfix", 0.5, 10_000),
    ("filterd milter", "plain Postfix", 0.6, 10_000),
)


@dataclass(frozen=True)
class Contender:
    name: str
    front: Front
    pids: Callable[[], list[int]]  # the filter's processes (none for plain Postfix)


@dataclass(frozen=True)
class Cpu:
    """CPU seconds of each measured program (from /proc; smtp-source's from its rusage)."""

    filter: float
    clamd: float
    postfix: float
    sink: float
    source: float = 0.0  # set from smtp-source's rusage once it has exited

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def others(self) -> float:
        """Everything except the filter: what a filter that cost nothing would still cost."""
        return self.clamd + self.postfix + self.sink + self.source

    @property
    def total(self) -> float:
        return self.filter + self.others


@dataclass
class Run:
    rate: float  # accepted msg/s
    cpu: Cpu  # from the start of the run until Postfix delivered all of it
    cores_used: float  # every measured program's CPU seconds per second of smtp-source's run
    machine_used: float  # the same for the bench's cores, whoever kept them busy (/proc/stat)
    seconds: float
    sent: Sent
    refused_at: Counter[str]  # by the SMTP step, from the front smtpd's log
    warnings: Counter[str]  # the front smtpd's warnings: who refused, and why
    problems: list[str]


@dataclass
class Bed:
    postfix: Postfix
    sink: SmtpSink
    clamd: Clamd

    def master_pid(self) -> list[int]:
        path = self.postfix.queue_directory / "pid" / "master.pid"
        return [int(path.read_text().split()[0])]


def installed(path: str) -> bool:
    return os.access(path, os.X_OK)


def peers(args: argparse.Namespace, clamd: Clamd, downstream: int) -> list[ChildProcess]:
    """The peers that are installed (and asked for), not started yet."""
    found: list[ChildProcess] = []
    wanted: list[tuple[str, Callable[[], ChildProcess]]] = [
        (CLAMSMTPD, lambda: Clamsmtp(free_port(), downstream, clamd.socket_path)),
        (CLAMAV_MILTER, lambda: ClamavMilter(free_port(), clamd.socket_path)),
    ]
    if args.rspamd:
        wanted.append((RSPAMD, lambda: Rspamd(free_port(), clamd.socket_path)))
    for path, make in wanted:
        if installed(path):
            found.append(make())
        else:
            print(f"skipped: {path} is not installed (run bench/peers-install)")
    return found


def contenders(filterd: FilterdServe, others: Sequence[ChildProcess]) -> list[Contender]:
    def own(process: FilterdServe | ChildProcess) -> Callable[[], list[int]]:
        return lambda: [process.pid]

    chosen = [
        Contender("plain Postfix", Front("plain", free_port(), "plain"), list),
        Contender(
            "filterd proxy",
            Front("filterd-proxy", free_port(), "proxy", f"127.0.0.1:{filterd.proxy_port}"),
            own(filterd),
        ),
    ]
    by_label = {peer.label: peer for peer in others}
    if (clamsmtp := by_label.get("clamsmtpd")) is not None:
        hook = f"127.0.0.1:{clamsmtp.port}"
        chosen.append(Contender("clamsmtpd", Front("clamsmtpd", free_port(), "proxy", hook),
                                own(clamsmtp)))  # fmt: skip
    hook = f"inet:127.0.0.1:{filterd.milter_port}"
    chosen.append(Contender("filterd milter", Front("filterd-milter", free_port(), "milter", hook),
                            own(filterd)))  # fmt: skip
    for label in ("clamav-milter", "rspamd"):
        if (peer := by_label.get(label)) is not None:
            hook = f"inet:127.0.0.1:{peer.port}"
            chosen.append(Contender(label, Front(label, free_port(), "milter", hook), own(peer)))
    return chosen


# --- one run --------------------------------------------------------------------------------


def run_once(bed: Bed, contender: Contender, shape: Shape) -> Run:
    offset = bed.postfix.maillog_path.stat().st_size
    received = bed.sink.received()
    before, idle = cpu_now(bed, contender), idle_seconds(CPUS)
    sent = smtp_source(contender.front.port, shape)
    sending = replace(cpu_now(bed, contender), source=sent.cpu) - before
    idle = idle_seconds(CPUS) - idle
    delivery = settle(bed, offset, received, contender.front.name, shape.messages)
    # Postfix and smtp-sink go on delivering after smtp-source ended: their CPU per message
    # is counted until the queue is empty, the busy cores only while smtp-source ran.
    cpu = replace(cpu_now(bed, contender), source=sent.cpu) - before
    return Run(
        rate=delivery.accepted / sent.seconds,
        cpu=cpu,
        cores_used=sending.total / sent.seconds,
        machine_used=max(0.0, len(CPUS) - idle / sent.seconds),
        seconds=sent.seconds,
        sent=sent,
        refused_at=delivery.refused_at,
        warnings=delivery.warnings,
        problems=problems(shape.messages, sent, delivery),
    )


def cpu_now(bed: Bed, contender: Contender) -> Cpu:
    return Cpu(
        filter=cpu_seconds(contender.pids()),
        clamd=cpu_seconds([bed.clamd.pid or 0]),
        postfix=cpu_seconds(bed.master_pid()),
        sink=cpu_seconds([bed.sink.pid]),
    )


def settle(bed: Bed, offset: int, received: int, front: str, messages: int) -> Delivery:
    """Wait until Postfix logged every session of `front`, delivered and removed every
    accepted message and smtp-sink counted them (bounded); return what the maillog says
    happened since `offset`."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        with bed.postfix.maillog_path.open(errors="replace") as log:
            log.seek(offset)
            delivery = Delivery.parse(log.read(), bed.sink.received() - received, front)
        done = delivery.settled(messages) and bed.postfix.queue_is_empty()
        if done or time.monotonic() > deadline:
            return delivery
        time.sleep(0.1)


# --- the table ------------------------------------------------------------------------------


def median(runs: Sequence[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(run) for run in runs)


def per_message(runs: Sequence[Run], cpu: Callable[[Run], float], messages: int) -> str:
    return f"{median(runs, cpu) / messages * 1000:.2f}"


def refused(runs: Sequence[Run]) -> str:
    """Refusals over the rounds by SMTP step, with the reply codes smtp-source printed."""
    steps = sum((run.refused_at for run in runs), start=Counter[str]())
    codes = sum((run.sent.refused for run in runs), start=Counter[str]())
    text = ", ".join(f"at {step} x{n}" for step, n in steps.most_common()) or "0"
    if codes:
        text += " (" + ", ".join(f"{code} x{n}" for code, n in codes.most_common()) + ")"
    return text


def warned(results: dict[str, list[Run]]) -> Iterator[str]:
    """The front smtpd's warnings over the rounds, per contender: who refused, and why."""
    for name, runs in results.items():
        warnings = sum((run.warnings for run in runs), start=Counter[str]())
        for text, count in warnings.most_common():
            yield f"- {name}: {text} x{count}"


def others_per_message(runs: Sequence[Run], messages: int) -> float:
    """Median CPU seconds per message of everything but the filter."""
    return median(runs, lambda r: r.cpu.others) / messages


def row(name: str, runs: Sequence[Run], shape: Shape, cores: int) -> str:
    rates = ", ".join(f"{run.rate:.0f}" for run in runs)
    refusals = refused(runs)
    if name == "plain Postfix":
        filter_cpu, filter_cores = "-", "-"
    else:
        filter_cpu = per_message(runs, lambda r: r.cpu.filter, shape.messages)
        filter_cores = f"{median(runs, lambda r: r.cpu.filter / r.seconds):.2f}"
    programs = " | ".join(
        per_message(runs, cpu, shape.messages)
        for cpu in (
            lambda r: r.cpu.clamd,
            lambda r: r.cpu.postfix,
            lambda r: r.cpu.source,
            lambda r: r.cpu.sink,
        )
    )
    others = others_per_message(runs, shape.messages)
    used = median(runs, lambda r: r.cores_used)
    machine = median(runs, lambda r: r.machine_used)
    check = "ok" if not any(run.problems for run in runs) else "MISMATCH"
    return (
        f"| {name} | {median(runs, lambda r: r.rate):.1f} ({rates}) | {filter_cpu} "
        f"| {filter_cores} | {programs} | {others * 1000:.2f} | {used:.2f} | {machine:.2f} "
        f"({bound(used, cores, machine)}) "
        f"| {ceiling(cores, others):.0f} | {refusals} | {check} |"
    )


def print_shape(shape: Shape, results: dict[str, list[Run]], rounds: int, cores: int) -> None:
    print(f"\n### {shape.label}: {shape.messages} messages of {shape.size} bytes per run, "
          f"{rounds} round(s)\n")  # fmt: skip
    print("| contender | accepted msg/s, median (rounds) | filter CPU ms/msg | filter cores "
          "| clamd CPU ms/msg | Postfix CPU ms/msg | smtp-source CPU ms/msg "
          "| smtp-sink CPU ms/msg | others ms/msg | cores used | machine cores busy (bound) "
          f"| ceiling msg/s on {cores} cores | refused | reconciled |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name, runs in results.items():
        print(row(name, runs, shape, cores))
    if lines := list(warned(results)):
        print("\nThe front smtpd's warnings (maillog):")
        print("\n".join(lines))


def rate(runs: Sequence[Run]) -> float:
    return median(runs, lambda r: r.rate)


def print_ratios(shapes: Sequence[Shape], results: dict[Shape, dict[str, list[Run]]]) -> None:
    print("\n### Ratios of the medians, with issue 12's goals\n")
    print("| ratio | " + " | ".join(shape.label for shape in shapes) + " | goal |")
    print("|---|" + "---:|" * len(shapes) + "---|")
    for top, bottom, goal, size in GOALS:
        cells = []
        for shape in shapes:
            by_name = results[shape]
            if top not in by_name or bottom not in by_name:
                cells.append("-")
                continue
            ratio = rate(by_name[top]) / rate(by_name[bottom])
            mark = "" if size not in (None, shape.size) else (" met" if ratio >= goal else " no")
            cells.append(f"{ratio:.2f}{mark}")
        where = "at every load" if size is None else f"at {size // 1000} KB"
        print(f"| {top} / {bottom} | " + " | ".join(cells) + f" | >= {goal} {where} |")


def needs(shape: Shape, by_name: dict[str, list[Run]], cores: int) -> Iterator[Need]:
    """Issue 12's goals that apply to `shape`, each with what filterd's figures say."""
    for top, bottom, goal, size in GOALS:
        if size not in (None, shape.size) or top not in by_name or bottom not in by_name:
            continue
        runs = by_name[top]
        yield Need(
            goal=f"{top} >= {goal}x {bottom}",
            goal_rate=goal * rate(by_name[bottom]),
            rate=rate(runs),
            filter_cpu=median(runs, lambda r: r.cpu.filter) / shape.messages,
            others=others_per_message(runs, shape.messages),
            cores=cores,
            cores_used=median(runs, lambda r: r.cores_used),
            machine_used=median(runs, lambda r: r.machine_used),
        )


def print_needs(
    shapes: Sequence[Shape], results: dict[Shape, dict[str, list[Run]]], cores: int
) -> None:
    print(f"\n### What each goal needs, on {cores} cores (bench/README.md, Peers)\n")
    print("| load | goal | goal msg/s | filterd msg/s | cores used, machine (bound) "
          "| others ms/msg "
          "| ceiling msg/s | filter CPU needed ms/msg | filter CPU measured ms/msg "
          "| verdict |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for shape in shapes:
        for need in needs(shape, results[shape], cores):
            print(
                f"| {shape.label} | {need.goal} | {need.goal_rate:.1f} | {need.rate:.1f} "
                f"| {need.cores_used:.2f}, {need.machine_used:.2f} "
                f"({bound(need.cores_used, cores, need.machine_used)}) "
                f"| {need.others * 1000:.2f} | {ceiling(cores, need.others):.0f} "
                f"| {need.needed * 1000:.2f} | {need.filter_cpu * 1000:.2f} | {need.verdict()} |"
            )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every contender")
    parser.add_argument("--rspamd", action="store_true", help="also rspamd (~20 s first start)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, one round")
    parser.add_argument(
        "--maillog", type=Path, help="keep a copy of the private Postfix's maillog here"
    )
    return parser.parse_args(argv)


def interleaved(
    contenders: Sequence[Contender], shapes: Sequence[Shape], rounds: int
) -> Iterator[tuple[Shape, Contender]]:
    for shape in shapes:
        for _ in range(rounds):
            for contender in contenders:
                yield shape, contender


def wait_for_fronts(chosen: Sequence[Contender]) -> None:
    for contender in chosen:
        port = contender.front.port
        wait_until(functools.partial(greets, port), timeout=30, what=f"front smtpd on {port}")


def check_scanning(bed: Bed, chosen: Sequence[Contender]) -> list[str]:
    """One EICAR message per filter; a filter that lets it reach smtp-sink does not scan."""
    failures = []
    for contender in chosen[1:]:
        scanned, what = virus_verdict(contender.front.port, bed.sink)
        print(f"  EICAR via {contender.name}: {what}", flush=True)
        if not scanned:
            failures.append(f"{contender.name} delivered EICAR: it does not scan")
    return failures


def stop_on_sigterm() -> None:
    """SIGTERM ends the bench like Ctrl-C: every program it started is stopped on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(f"bench.peers: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    if os.geteuid() != 0:
        sys.exit("bench.peers needs root (a private Postfix, as the test bed does)")
    shapes, rounds = (QUICK, 1) if args.quick else (FULL, args.rounds)
    clamd = Clamd(max_threads=10)
    downstream = free_port()
    filterd = FilterdServe(Ports(free_port(), free_port(), downstream), clamd.address, workers=0)
    others = peers(args, clamd, downstream)
    chosen = contenders(filterd, others)
    sink = SmtpSink(free_port())
    postfix = one_postfix([c.front for c in chosen], downstream, sink, {})
    bed = Bed(postfix, sink, clamd)
    results: dict[Shape, dict[str, list[Run]]] = {s: {c.name: [] for c in chosen} for s in shapes}
    failures: list[str] = []
    with running(clamd, sink, filterd, *others, postfix):
        wait_for_fronts(chosen)
        for contender in chosen:
            failures += [
                f"warm-up {contender.name}: {p}" for p in run_once(bed, contender, WARM_UP).problems
            ]
        failures += check_scanning(bed, chosen)
        for shape, contender in interleaved(chosen, shapes, rounds):
            run = run_once(bed, contender, shape)
            results[shape][contender.name].append(run)
            failures += [f"{shape.label} {contender.name}: {p}" for p in run.problems]
            print(f"  {shape.label:<12} {contender.name:<15} {run.rate:7.1f} msg/s", flush=True)
        if args.maillog is not None:  # the private Postfix's directory goes with it
            shutil.copyfile(postfix.maillog_path, args.maillog)
    cores = len(CPUS)
    for shape in shapes:
        print_shape(shape, results[shape], rounds, cores)
    print_ratios(shapes, results)
    print_needs(shapes, results, cores)
    for failure in failures:
        print(f"MISMATCH: {failure}")
    print("\nreconciled: " + ("no" if failures else "yes, nothing lost or duplicated"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
