"""Soak: N mixed messages through a real private Postfix in each mode, then reconcile.

    sudo .venv/bin/python -m bench.soak [--messages N] [--sessions S] [--modes proxy,milter]

Needs root (private Postfix instances, as the test bed does) and clamd. It starts a private
clamd, ONE `filterd serve --proxy ... --milter ...` process, and two private Postfix 3.7
instances, each delivering to its own test bed sink:
- proxy:  client -> front smtpd (master.cf.d/proxy.cf) -> filterd proxy -> reinjection
          smtpd -> sink;
- milter: client -> smtpd with smtpd_milters = filterd -> sink.

Each mode gets N messages over S parallel sessions, one message per SMTP session, in a
fixed mix: clean; EICAR (built at run time by the test bed, never stored in the repository);
a smuggling attempt that Postfix passes on (a bare CR, ".", CRLF, then a second transaction
with its own Message-ID); and an oversize one (larger than filterd's [clamd] max_scan_size,
set to 1 MB here). Every message has a unique Message-ID. Then it waits for Postfix to
deliver and reconciles, per mode:
- sent = delivered + refused (by reply code), and no message went unanswered;
- every accepted message reached the sink exactly once (nothing lost or duplicated);
- nothing refused, nothing infected and no smuggled transaction reached the sink.
It prints the counts per mode and per kind, and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench.serve import FilterdServe, Ports
from bench.smtpwire import AsyncSession, SmtpError, stuffed
from tests.integration.proxy_chain import snippet_services
from tests.testbed.clamd import Clamd, eicar_bytes
from tests.testbed.common import StartupError, free_port
from tests.testbed.postfix import Postfix

MAX_SCAN_SIZE = 1_000_000
OVERSIZE = 1_200_000
SENDER = "soak@example.test"
RECIPIENT = "someone@example.test"


def message_id(mode: str, number: int) -> str:
    return f"<soak-{mode}-{number}@example.test>"


def head(mode: str, number: int, kind: str) -> bytes:
    return (
        f"From: Soak <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: soak {kind} {number}\r\n"
        f"Message-ID: {message_id(mode, number)}\r\n\r\n"
    ).encode()


def clean(mode: str, number: int) -> bytes:
    line = f"clean soak line {number}, nothing to see here.\r\n".encode()
    return head(mode, number, "clean") + line * (10 + number % 50) + b".dot line\r\n"


def eicar(mode: str, number: int) -> bytes:
    return head(mode, number, "eicar") + b"attachment follows\r\n" + eicar_bytes() + b"\r\n"


def smuggle(mode: str, number: int) -> bytes:
    # A receiver that ends lines at a bare CR sees "." alone: a fake end of data, and then
    # the second transaction. Postfix's smtpd only ends lines at LF, so it passes this on.
    second = (
        f"MAIL FROM:<smuggler@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
        f"Message-ID: <smuggled-{mode}-{number}@example.test>\r\nSubject: smuggled\r\n\r\n"
        f"smuggled\r\n"
    ).encode()
    return head(mode, number, "smuggle") + b"first part\r.\r\n" + second


def oversize(mode: str, number: int) -> bytes:
    line = b"oversize soak line, plain text, repeated to pass max_scan_size.\r\n"
    return head(mode, number, "oversize") + line * (OVERSIZE // len(line))


Builder = Callable[[str, int], bytes]
# One cycle of 20: 17 clean, then one of each hostile kind.
CYCLE: list[tuple[str, Builder]] = [
    *[("clean", clean)] * 17,
    ("eicar", eicar),
    ("smuggle", smuggle),
    ("oversize", oversize),
]


@dataclass
class Tally:
    """What one mode's clients were told, and what its sink received."""

    mode: str
    kinds: dict[int, str] = field(default_factory=dict)
    accepted: set[int] = field(default_factory=set)
    refused: dict[int, str] = field(default_factory=dict)  # number -> reply, e.g. 554 5.7.1
    unanswered: dict[int, str] = field(default_factory=dict)  # number -> what broke
    delivered: Counter[str] = field(default_factory=Counter)  # Message-ID -> times
    seconds: float = 0.0

    def problems(self) -> Iterator[str]:
        ids = {message_id(self.mode, n): n for n in self.kinds}
        accepted_ids = {message_id(self.mode, n) for n in self.accepted}
        if len(self.kinds) != len(self.accepted) + len(self.refused) + len(self.unanswered):
            yield "sent != accepted + refused + unanswered"
        if self.unanswered:
            yield f"{len(self.unanswered)} unanswered: {Counter(self.unanswered.values())}"
        missing = accepted_ids - set(self.delivered)
        if missing:
            yield f"{len(missing)} accepted but never delivered: {sorted(missing)[:5]}"
        duplicated = [mid for mid, n in self.delivered.items() if n > 1]
        if duplicated:
            yield f"{len(duplicated)} delivered more than once: {sorted(duplicated)[:5]}"
        unexpected = set(self.delivered) - accepted_ids
        if unexpected:
            yield f"{len(unexpected)} delivered but not accepted: {sorted(unexpected)[:5]}"
        infected = [mid for mid in self.delivered if self.kinds.get(ids.get(mid, -1)) == "eicar"]
        if infected:
            yield f"{len(infected)} EICAR messages delivered"

    def by_kind(self) -> Iterator[str]:
        for kind in dict.fromkeys(kind for kind, _ in CYCLE):
            numbers = [n for n, k in self.kinds.items() if k == kind]
            outcomes: Counter[str] = Counter()
            for n in numbers:
                if n in self.accepted:
                    outcomes["250 accepted"] += 1
                elif n in self.refused:
                    outcomes[self.refused[n]] += 1
                else:
                    outcomes["unanswered"] += 1
            text = ", ".join(f"{what} x{count}" for what, count in outcomes.most_common())
            yield f"  {kind:>8}: {len(numbers):5}  {text}"


async def send_one(port: int, content: bytes, wait: float) -> tuple[str, str]:
    """("accepted" | "refused" | "unanswered", the reply or what broke)."""
    try:
        session = await AsyncSession.open("127.0.0.1", port, wait)
    except (OSError, TimeoutError) as exc:
        return "unanswered", f"connect: {type(exc).__name__}"
    try:
        reply = await session.envelope(SENDER, [RECIPIENT])
        if reply.code == 354:
            await session.send(stuffed(content))
            reply = await session.reply()
        await session.command("QUIT")
    except (OSError, TimeoutError, SmtpError) as exc:
        return "unanswered", type(exc).__name__
    finally:
        await session.close()
    if reply.code == 250:
        return "accepted", reply.short
    return "refused", reply.short


async def send_all(tally: Tally, port: int, messages: int, sessions: int) -> None:
    slots = asyncio.Semaphore(sessions)

    async def one(number: int) -> None:
        kind, build = CYCLE[number % len(CYCLE)]
        tally.kinds[number] = kind
        async with slots:
            outcome, reply = await send_one(port, build(tally.mode, number), 120.0)
        if outcome == "accepted":
            tally.accepted.add(number)
        elif outcome == "refused":
            tally.refused[number] = reply
        else:
            tally.unanswered[number] = reply

    await asyncio.gather(*(one(number) for number in range(messages)))


def collect(tally: Tally, postfix: Postfix, timeout: float) -> None:
    """Wait for the accepted messages at the sink and an empty queue; count Message-IDs."""
    deadline = time.monotonic() + timeout
    sink = postfix.sink
    while len(sink.messages) < len(tally.accepted) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        postfix.wait_queue_empty(timeout=max(1.0, deadline - time.monotonic()))
    except AssertionError as exc:
        print(f"{tally.mode}: {exc}", file=sys.stderr)
    time.sleep(1.0)  # a late duplicate would arrive now
    for received in sink.messages:
        for value in received.header_values("Message-ID") or ["(no Message-ID)"]:
            tally.delivered[value] += 1


def report(tally: Tally) -> list[str]:
    problems = list(tally.problems())
    refused = Counter(tally.refused.values())
    refused_text = ", ".join(f"{reply} x{n}" for reply, n in refused.most_common()) or "none"
    rate = len(tally.kinds) / tally.seconds if tally.seconds else 0.0
    print(
        f"{tally.mode}: sent {len(tally.kinds)} in {tally.seconds:.1f} s ({rate:.0f} msg/s), "
        f"accepted {len(tally.accepted)}, delivered {sum(tally.delivered.values())} "
        f"({len(tally.delivered)} distinct Message-IDs), refused {len(tally.refused)} "
        f"({refused_text}), unanswered {len(tally.unanswered)}"
    )
    for line in tally.by_kind():
        print(line)
    print(f"  {'result':>8}: " + ("reconciled" if not problems else "MISMATCH"))
    for problem in problems:
        print(f"  {'':>8}  {problem}")
    return problems


def run(modes: list[str], messages: int, sessions: int) -> bool:
    clamd = Clamd()
    ports = Ports(proxy=free_port(), milter=free_port(), downstream=free_port())
    settings = f"[clamd]\nmax_scan_size = {MAX_SCAN_SIZE}\n"
    filterd = FilterdServe(ports, clamd.address, settings=settings)
    postfixes = {
        "proxy": Postfix(
            "proxy",
            services=snippet_services(),
            filter_port=ports.proxy,
            downstream_port=ports.downstream,
        ),
        "milter": Postfix("milter", milter=f"inet:127.0.0.1:{ports.milter}"),
    }
    problems: list[str] = []
    try:
        clamd.start()
        filterd.start()
        for mode in modes:
            postfix = postfixes[mode]
            postfix.start()
            tally = Tally(mode)
            started = time.monotonic()
            asyncio.run(send_all(tally, postfix.smtpd_port, messages, sessions))
            tally.seconds = time.monotonic() - started
            collect(tally, postfix, timeout=60.0 + messages / 20)
            problems += report(tally)
        if not filterd.alive():
            problems.append(f"filterd exited ({filterd.returncode})")
    except StartupError as exc:
        sys.exit(f"soak: {exc}")
    finally:
        for postfix in postfixes.values():
            postfix.close()
        filterd.close()
        clamd.close()
    return not problems


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="per mode")
    parser.add_argument("--sessions", type=int, default=8, help="parallel SMTP sessions")
    parser.add_argument("--modes", default="proxy,milter")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= {"proxy", "milter"}:
        parser.error("--modes takes proxy and/or milter")
    if os.geteuid() != 0:
        sys.exit("bench.soak needs root (private Postfix instances)")
    ok = run(modes, args.messages, args.sessions)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
