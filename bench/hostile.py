"""Innocent proxy latency while one filterd process is under hostile load (issue 9).

    .venv/bin/python -m bench.hostile [--small] [--only NAME,NAME] [--seconds S]

It starts a private clamd (the test bed's), Postfix's smtp-sink(1) as the proxy's
downstream, and ONE `filterd serve --proxy ... --milter ...` process whose soft
RLIMIT_NOFILE is --nofile (default 1024, the usual soft limit; the hard limit is left as it
is). For each attack in turn it measures an innocent client (bench/innocent.py, in its own
process: a small clean message per fresh SMTP session to the proxy, timed from connect to
the 250 after the final ".") for --quiet-seconds without the attack, then for --seconds
with it. It prints one table row per attack: innocent p50 / p99 / max latency without and
with the attack, the innocent transactions that failed and their replies, filterd's peak
RSS during the attack (VmHWM, reset before the phase, and VmRSS polled), how much filterd
logged, whether filterd survived, and what the attacker was told.

Every phase is bounded: an attack stops starting new rounds at the phase deadline, and
every wait for a reply is bounded by --timeout. A filterd that died or no longer greets
after an attack is reported and restarted, so the next attack meets a fresh process.
--small keeps every shape and shrinks the sizes (and runs filterd with a lower --nofile,
so the descriptor attack still exhausts it) for a quick run. Goal (issue 9): innocent max
latency <= 1 s under every attack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench import innocent
from bench.attacks import ATTACKS, Attack, Sizes, Target
from bench.serve import FilterdServe, Ports
from tests.processes import accepts
from tests.testbed.clamd import Clamd
from tests.testbed.common import StartupError, free_port, register, unregister, wait_until

SMTP_SINK = "/usr/sbin/smtp-sink"
GOAL_SECONDS = 1.0


class SmtpSink:
    """Postfix's smtp-sink(1) on a loopback port: the proxy's downstream, discarding mail."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"smtp-sink[127.0.0.1:{self.port}]"

    def start(self) -> None:
        # -u: required when run as root; -m: concurrent sessions (default 256).
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        command = [SMTP_SINK, *user, "-m", "2000", f"127.0.0.1:{self.port}", "1024"]
        register(self)
        self.process = subprocess.Popen(  # noqa: S603 (fixed argument list)
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self.listens, timeout=10, what="smtp-sink to listen")

    def listens(self) -> bool:
        return accepts("127.0.0.1", self.port, 0.5)

    def close(self) -> None:
        unregister(self)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


@dataclass
class Phase:
    """The innocent transactions of one phase and what filterd cost meanwhile."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    peak_rss_kib: int = 0
    peak_fds: int = 0
    logged: int = 0
    note: str = ""
    worst_step: str = ""  # the slowest step of the slowest innocent transaction

    def figures(self) -> str:
        """`p50 / p99 / max` in milliseconds, over the delivered innocent messages."""
        if not self.latencies:
            return "-"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        values = (statistics.median(ordered), p99, ordered[-1])
        text = " / ".join(f"{value * 1000:.0f}" for value in values)
        slowest = f"; slowest step of max: {self.worst_step}" if self.worst_step else ""
        return f"{text} (n={len(ordered)}{slowest})"

    def failed(self) -> str:
        total = sum(self.failures.values())
        if not total:
            return "0"
        kinds = ", ".join(f"{text} x{n}" for text, n in self.failures.most_common(3))
        return f"{total} of {total + len(self.latencies)} ({kinds})"

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)


@dataclass(frozen=True)
class Options:
    quiet_seconds: float
    seconds: float
    timeout: float
    innocent_timeout: float
    pause: float


class Innocent:
    """The innocent loop as a separate process; `results()` stops it and collects."""

    def __init__(self, port: int, options: Options) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.receiver, sender = context.Pipe(duplex=False)
        args = (port, self.stop, sender, options.innocent_timeout, options.pause)
        self.process = context.Process(target=innocent.loop, args=args, daemon=True)
        self.process.start()
        sender.close()
        self.grace = options.innocent_timeout + 10

    async def results(self) -> list[innocent.Result]:
        self.stop.set()
        try:
            if await asyncio.to_thread(self.receiver.poll, self.grace):
                results: list[innocent.Result] = self.receiver.recv()
                return results
            return [(self.grace, "innocent client did not report", "")]
        finally:
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
            self.receiver.close()


async def watch(filterd: FilterdServe, phase: Phase, stop: asyncio.Event) -> None:
    """Poll filterd's VmRSS and open descriptors every 50 ms until `stop`."""
    while not stop.is_set():
        phase.peak_rss_kib = max(phase.peak_rss_kib, filterd.status_kib("VmRSS"))
        phase.peak_fds = max(phase.peak_fds, filterd.open_files())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await stop.wait()


async def measure(
    filterd: FilterdServe, attack: Attack | None, seconds: float, sizes: Sizes, options: Options
) -> Phase:
    """Innocent transactions for `seconds` (longer if the attack's last round runs on)."""
    phase = Phase()
    filterd.reset_peak()
    logged_before = filterd.log_size()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(filterd, phase, stop))
    client = Innocent(filterd.proxy_port, options)
    deadline = time.monotonic() + seconds
    if attack is None:
        await asyncio.sleep(seconds)
    else:
        target = Target(filterd.proxy_port, filterd.milter_port, deadline, options.timeout, sizes)
        try:
            async with asyncio.timeout(seconds + options.timeout * 2 + 10):
                phase.note = await attack(target)
        except TimeoutError:
            phase.note = "attack cut off at the phase limit"
    for seconds_taken, failure, step in await client.results():
        if failure:
            phase.failures[failure] += 1
        else:
            phase.latencies.append(seconds_taken)
            if seconds_taken >= phase.worst:
                phase.worst_step = step
    stop.set()
    await watcher
    phase.peak_rss_kib = max(phase.peak_rss_kib, filterd.status_kib("VmHWM"))
    phase.logged = filterd.log_size() - logged_before
    return phase


def recover(filterd: FilterdServe) -> str:
    """`ok`, or what happened to filterd (it is restarted then)."""
    if not filterd.alive():
        state = f"died (exit {filterd.returncode}), restarted"
    elif not any(filterd.greets(timeout=5) for _ in range(3)):
        state = "wedged (no greeting), restarted"
    else:
        return "ok"
    try:
        filterd.restart()
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return state.replace("restarted", "NOT restarted")
    return state


@dataclass(frozen=True)
class Row:
    name: str
    shape: str
    quiet: Phase
    loud: Phase
    after: str


def shape_text(name: str, sizes: Sizes, options: Options) -> str:
    shapes = {
        "milter-fds": f"{sizes.milter_connections} idle connections",
        "proxy-stall": f"{sizes.stall_parallel} x {sizes.stall_bytes / 1e6:.1f} MB at once",
        "milter-empty-lines": f"{sizes.empty_lines:,} empty lines",
        "milter-no-lf": f"{sizes.nolf_bytes / 1e6:.1f} MB",
        "milter-flood": f"{sizes.packets:,} packets",
        "slow-silent": f"{sizes.silent} connections",
        "slow-drip": f"1 byte / {sizes.drip_interval:g} s for {options.seconds:g} s",
        "memory": f"{sizes.memory_messages} x {sizes.memory_bytes / 1e6:.1f} MB at once",
    }
    return shapes[name]


def table(rows: list[Row]) -> Iterator[str]:
    yield (
        "| attack | shape | innocent ms p50 / p99 / max, without attack | with attack "
        "| innocent failed (with) | filterd peak RSS MB | peak fds | logged MB "
        "| filterd after | attacker was told |"
    )
    yield "|---|---|---:|---:|---|---:|---:|---:|---|---|"
    for row in rows:
        loud = row.loud
        yield (
            f"| {row.name} | {row.shape} | {row.quiet.figures()} | {loud.figures()} "
            f"| {loud.failed()} | {loud.peak_rss_kib / 1024:.0f} | {loud.peak_fds} "
            f"| {loud.logged / 1e6:.1f} | {row.after} | {loud.note} |"
        )


async def run(names: list[str], sizes: Sizes, options: Options, nofile: int) -> list[Row]:
    clamd = Clamd(stream_max_length=32 * 1024 * 1024, max_threads=10)
    sink = SmtpSink()
    ports = Ports(proxy=free_port(), milter=free_port(), downstream=sink.port)
    filterd = FilterdServe(ports, clamd.address, nofile=nofile)
    rows: list[Row] = []
    try:
        clamd.start()
        sink.start()
        filterd.start()
        print(f"filterd pid {filterd.pid}, RLIMIT_NOFILE soft/hard {filterd.nofile_limit()}")
        for name in names:
            what, attack = ATTACKS[name]
            print(f"{name} ({what}): {shape_text(name, sizes, options)} ...", flush=True)
            quiet = await measure(filterd, None, options.quiet_seconds, sizes, options)
            loud = await measure(filterd, attack, options.seconds, sizes, options)
            after = recover(filterd)
            rows.append(Row(name, shape_text(name, sizes, options), quiet, loud, after))
            if not filterd.alive():
                print("filterd is gone: the remaining attacks are not run", file=sys.stderr)
                break
    finally:
        filterd.close()
        sink.close()
        clamd.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smaller sizes, same shapes")
    parser.add_argument("--only", help=f"comma-separated attacks, of: {', '.join(ATTACKS)}")
    parser.add_argument("--seconds", type=float, help="attack phase (default 20, small 3)")
    parser.add_argument("--quiet-seconds", type=float, help="phase without attack (5, small 2)")
    parser.add_argument("--timeout", type=float, help="bound on each reply (60, small 15)")
    parser.add_argument("--nofile", type=int, help="filterd's soft RLIMIT_NOFILE (1024/256)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(ATTACKS)
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(unknown)}")
    small = args.small
    sizes = Sizes.small() if small else Sizes()
    options = Options(
        quiet_seconds=args.quiet_seconds or (2.0 if small else 5.0),
        seconds=args.seconds or (3.0 if small else 20.0),
        timeout=args.timeout or (15.0 if small else 60.0),
        innocent_timeout=10.0,
        pause=0.05,
    )
    nofile = args.nofile or (256 if small else 1024)
    started = time.monotonic()
    try:
        rows = asyncio.run(run(names, sizes, options, nofile))
    except StartupError as exc:
        sys.exit(f"bench.hostile: {exc}")
    today = dt.datetime.now(tz=dt.UTC).date().isoformat()
    print(
        f"\n{today}, Python {platform.python_version()}, {'small' if small else 'full'} sizes, "
        f"{options.seconds:g} s per attack, {time.monotonic() - started:.0f} s in all\n"
    )
    for line in table(rows):
        print(line)
    over = [row.name for row in rows if row.loud.worst > GOAL_SECONDS or row.loud.failures]
    verdict = "met under every attack" if not over else f"NOT met under: {', '.join(over)}"
    print(f"\ngoal (innocent max <= {GOAL_SECONDS:g} s, no failure): {verdict}")
    sys.exit(0)


if __name__ == "__main__":
    main()
