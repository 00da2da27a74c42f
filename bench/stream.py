"""Streaming to clamd, before and after: one endpoint, two filterd, interleaved in one run.

    .venv/bin/python -m bench.stream --endpoint proxy|milter [--before REV] [--rounds R]

Needs root, Postfix and clamd (as the test bed does). It starts one private clamd and two
`filterd serve` processes of the same endpoint: "before" runs the code of git revision REV
(default `main`, taken with `git archive` into a private directory: the scan starts after
the final dot), "after" runs this tree (the content streams to clamd as it arrives). Each
has its own private Postfix (front smtpd -> filterd -> reinjection smtpd for the proxy,
smtpd_milters for the milter), accepted mail discarded. For 10 KB and 1 MB the two take
turns, round by round (A B A B ...), on the same load:
- msg/s: smtp-source(1), 10 parallel sessions, one message per session;
- filterd CPU: user plus system CPU of that filterd process per message, during that run;
- dot->verdict: filterd's own `elapsed` (message line: end of content to verdict) of the
  messages of that run, median and 90th percentile;
- one client: then one client per filterd, through the front smtpd, messages one after
  another, the two taking turns message by message: filterd's `elapsed` again, and the time
  from sending the final "." to reading the reply (what the sending MTA waits for).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import DISCARD, Startable, cpu_seconds, proxy_postfix, running, smtp_source
from filterd.testing import RawSmtpClient, last_line, smtp_session
from tests.processes import ROOT, FilterdProcess
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port, private_dir, remove_dir
from tests.testbed.postfix import Postfix

SIZES = {"10 KB": 10_000, "1 MB": 1_000_000}
MESSAGES = {"10 KB": 400, "1 MB": 100}  # per smtp-source run
SESSIONS = 10
LATENCY_MESSAGES = 60  # per size and contender, one client each, taking turns


def source_tree(rev: str) -> Path:
    """The filterd package of `rev` in a private directory (`git archive`, no worktree)."""
    directory = private_dir("filterd-bench-before-")
    archive = subprocess.run(  # noqa: S603 (fixed argument list)
        ["git", "-C", str(ROOT), "archive", rev, "filterd"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)  # noqa: S603, S607
    return directory


class Filterd(FilterdProcess):
    """`filterd serve` of this tree, or of the package in `tree` when given."""

    def __init__(self, args: list[str], listen: str, tree: Path | None) -> None:
        super().__init__(args, listen, "")
        if tree is not None:
            boot = (
                f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
                "runpy.run_module('filterd.cli', run_name='__main__')"
            )
            self.command[1:3] = ["-c", boot]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def elapsed(self, skip: int) -> list[float]:
        """`elapsed` of the message lines after the first `skip` ones."""
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{") and '"message"' in line:
                entry = json.loads(line)
                if entry.get("event") == "message" and "elapsed" in entry:
                    found.append(float(entry["elapsed"]))
        return found[skip:]

    def lines(self) -> int:
        return len(self.elapsed(0))


@dataclass
class Contender:
    name: str
    filterd: Filterd
    postfix: Postfix
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    verdict: dict[str, list[float]] = field(default_factory=dict)
    reply: dict[str, list[float]] = field(default_factory=dict)
    alone: dict[str, list[float]] = field(default_factory=dict)  # dot->verdict, one client


def contenders(endpoint: str, clamd: str, before: Path) -> list[Contender]:
    found = []
    for name, tree in (("before", before), ("after", None)):
        if endpoint == "proxy":
            port, downstream = free_port(), free_port()
            args = ["--proxy", f"127.0.0.1:{port}", "--downstream", f"127.0.0.1:{downstream}"]
            filterd = Filterd([*args, "--clamd", clamd], f"inet:127.0.0.1:{port}", tree)
            postfix = proxy_postfix(port, downstream)
        else:
            listen = f"inet:127.0.0.1:{free_port()}"
            filterd = Filterd(["--milter", listen, "--clamd", clamd], listen, tree)
            postfix = Postfix("milter", milter=listen, main_cf=DISCARD)
        found.append(Contender(name, filterd, postfix))
    return found


def body(size: int) -> Iterator[bytes]:
    head = b"From: sender@example.test\r\nTo: someone@example.test\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    yield head + line * max(1, (size - len(head)) // len(line))


def one_message(client: RawSmtpClient, content: bytes) -> float:
    """Seconds from sending the final "." to reading the reply, for one message."""
    client.command(b"MAIL FROM:<sender@example.test>\r\n")
    client.command(b"RCPT TO:<someone@example.test>\r\n")
    if not client.command(b"DATA\r\n").startswith("354"):
        sys.exit("DATA refused")
    client.send(content)
    started = time.monotonic()
    reply = last_line(client.command(b".\r\n"))
    seconds = time.monotonic() - started
    if not reply.startswith("250"):
        sys.exit(f"message refused: {reply}")
    return seconds


def latency(everyone: list[Contender], label: str, messages: int) -> None:
    """One client per contender, taking turns message by message (A B A B ...)."""
    content = b"".join(body(SIZES[label]))
    clients = [smtp_session(who.postfix.smtpd_port, timeout=60) for who in everyone]
    try:
        for _ in range(messages):
            for who, client in zip(everyone, clients, strict=True):
                logged = who.filterd.lines()
                who.reply.setdefault(label, []).append(one_message(client, content))
                who.alone.setdefault(label, []).extend(who.filterd.elapsed(logged))
    finally:
        for client in clients:
            client.close()


def one_round(who: Contender, label: str) -> None:
    size, messages = SIZES[label], MESSAGES[label]
    logged = who.filterd.lines()
    used = cpu_seconds(who.filterd.pid)
    seconds = smtp_source(who.postfix, messages, SESSIONS, size)
    who.cpu.setdefault(label, []).append((cpu_seconds(who.filterd.pid) - used) / messages)
    who.rates.setdefault(label, []).append(messages / seconds)
    who.verdict.setdefault(label, []).extend(who.filterd.elapsed(logged))


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def report(endpoint: str, rev: str, rounds: int, everyone: list[Contender]) -> None:
    print(f"filterd {endpoint}, before = {rev}, after = this tree")
    print(
        f"under load: smtp-source, {SESSIONS} sessions, one message per session,"
        f" {rounds} rounds ABAB; one client: {LATENCY_MESSAGES} messages each, taking turns"
    )
    print("ms are medians (p90: 90th percentile); dot->verdict is filterd's `elapsed`")
    print(
        f"{'size':>6} {'mode':>7} {'msg/s (runs)':>18} {'CPU ms/msg':>11}"
        f" {'load: dot->verdict':>19} {'p90':>7} {'one client: dot->verdict':>25}"
        f" {'dot->reply':>11} {'p90':>7}"
    )
    for label in SIZES:
        for who in everyone:
            runs = ", ".join(f"{r:.0f}" for r in who.rates[label])
            rate = f"{statistics.median(who.rates[label]):.1f} ({runs})"
            loaded, alone, reply = who.verdict[label], who.alone[label], who.reply[label]
            print(
                f"{label:>6} {who.name:>7} {rate:>18} "
                f"{statistics.median(who.cpu[label]) * 1000:11.2f} "
                f"{ms(statistics.median(loaded)):>19} {ms(p90(loaded)):>7} "
                f"{ms(statistics.median(alone)):>25} "
                f"{ms(statistics.median(reply)):>11} {ms(p90(reply)):>7}"
            )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--endpoint", choices=["proxy", "milter"], required=True)
    parser.add_argument("--before", default="main", help="git revision of the 'before' code")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    before = source_tree(args.before)
    clamd = Clamd()
    everyone = contenders(args.endpoint, clamd.address, before)
    things: list[Startable] = [clamd, *(c.filterd for c in everyone)]
    things += [c.postfix for c in everyone]
    try:
        with running(*things):
            for who in everyone:  # warm-up: first connections and scans
                smtp_source(who.postfix, 20, 5, 10_000)
            for _ in range(args.rounds):
                for label in SIZES:
                    for who in everyone:
                        one_round(who, label)
            for label in SIZES:
                latency(everyone, label, LATENCY_MESSAGES)
            errors = sum(c.filterd.log_text().count('"level": "error"') for c in everyone)
    finally:
        remove_dir(before)
    report(args.endpoint, args.before, args.rounds, everyone)
    print(f"errors logged by filterd: {errors}")


if __name__ == "__main__":
    main()
