"""What one run of the peers bench measures: smtp-source's accepted messages per second,
CPU seconds per process tree from /proc, and the reconciliation of what smtp-source sent
with what Postfix queued and delivered and what smtp-sink received."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SMTP_SOURCE: Final = "/usr/sbin/smtp-source"
SENDER: Final = "sender@example.test"
RECIPIENT: Final = "someone@example.test"
TICKS: Final = os.sysconf("SC_CLK_TCK")

# smtp-source(1) -A: a refusal is a warning line that ends in the server's reply.
_REFUSED = re.compile(
    r"^smtp-source: warning: .*?: (\d{3}(?: \d\.\d{1,3}\.\d{1,3})?)", re.MULTILINE
)
# Postfix maillog lines (qmgr(8), smtp(8)): a queued message, a delivery, a removal.
_QUEUED = re.compile(r"postfix/qmgr\[\d+\]: ([0-9A-Za-z]+): from=<")
_SENT = re.compile(r"postfix/smtp\[\d+\]: ([0-9A-Za-z]+): to=<[^>]*>.* status=sent ")
_REMOVED = re.compile(r"postfix/qmgr\[\d+\]: ([0-9A-Za-z]+): removed")
# smtpd(8)'s last line per session counts each command as done/issued ("rcpt=0/1": refused);
# with one message per session, "data=1" is one message the client got a 250 for.
_DISCONNECT = re.compile(r"postfix/peers-([\w-]+)/smtpd\[\d+\]: disconnect from \S+ (.*)")
_FAILED = re.compile(r"(\w+)=0/\d+")
# smtpd(8)'s warnings say who refused: the proxy filter's own reply ("proxy 127.0.0.1:PORT
# rejected ...: 421 ..."), a proxy that did not answer in smtpd_proxy_timeout, a process limit.
_WARNING = re.compile(r"postfix/peers-([\w-]+)/smtpd\[\d+\]: warning: (.*)")
_ADDRESS = re.compile(r" ?\b\d{1,3}(?:\.\d{1,3}){3}:\d+\b")


@dataclass(frozen=True)
class Shape:
    """One load: `messages` of `size` bytes over `sessions` parallel SMTP sessions."""

    size: int
    sessions: int
    messages: int

    @property
    def label(self) -> str:
        size = (
            f"{self.size // 1_000_000} MB" if self.size >= 1_000_000 else f"{self.size // 1000} KB"
        )
        return f"{size}, C={self.sessions}"


@dataclass
class Sent:
    """What smtp-source saw: its run time, the refusals it printed by reply code, its exit,
    and the CPU seconds it used itself (user + system, from its resource usage).

    It does not print every refusal: a 451 to RCPT (a proxy filter that did not answer in
    time) is followed by RSET without a word, so the counts come from Postfix's log.
    """

    seconds: float
    refused: Counter[str]
    returncode: int
    error: str
    cpu: float = 0.0


def smtp_source(port: int, shape: Shape) -> Sent:
    """One smtp-source(1) run against 127.0.0.1:`port`, one message per SMTP session (no -d).

    -A keeps it going after a refusal (it prints a warning instead), so a contender that
    refuses some mail still gets a figure, and the refusals are counted by reply code.
    """
    command = [
        SMTP_SOURCE, "-A", "-C", "3",
        "-m", str(shape.messages), "-s", str(shape.sessions), "-l", str(shape.size),
        "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}",
    ]  # fmt: skip
    started, used = time.monotonic(), _children_cpu()
    result = subprocess.run(  # noqa: S603 (fixed argument list, our own values)
        command, capture_output=True, text=True, timeout=900, check=False
    )
    seconds, cpu = time.monotonic() - started, _children_cpu() - used
    error = "" if result.returncode == 0 else result.stderr.strip()[-300:]
    return Sent(seconds, refusals(result.stderr), result.returncode, error, cpu)


def _children_cpu() -> float:
    """CPU seconds of this process's children that ended and were waited for (getrusage(2)
    RUSAGE_CHILDREN): around subprocess.run, the one child it waits for (the bench waits
    for no other process meanwhile)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def refusals(stderr: str) -> Counter[str]:
    """smtp-source's refusal warnings counted by reply code ("451 4.3.0": 3)."""
    return Counter(_REFUSED.findall(stderr))


# --- CPU --------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name (proc(5)); [] when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rpartition(")")[2].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, every thread) of each process in `pids` and of every
    descendant alive now, plus what their children that already ended and were waited for
    used (cutime, cstime): master(8)'s smtpd processes come and go during a run."""
    tree = _children()
    total = 0
    stack = list(pids)
    while stack:
        pid = stack.pop()
        fields = _stat(pid)
        if fields:
            # proc(5) fields 14-17 (utime stime cutime cstime), here from index 11.
            total += sum(int(value) for value in fields[11:15])
        stack.extend(tree.get(pid, []))
    return total / TICKS


def idle_seconds(cpus: Iterable[int], stat: str | None = None) -> float:
    """Seconds the cores `cpus` spent idle (or waiting for I/O) since boot, from their
    /proc/stat lines (proc(5)). Idle time is what is exact there: busy time comes in clock
    ticks, and a virtual machine's steal arrives in bursts, so busy = wall - idle."""
    text = Path("/proc/stat").read_text() if stat is None else stat
    wanted = {f"cpu{cpu}" for cpu in cpus}
    ticks = 0
    for line in text.splitlines():
        name, _, values = line.partition(" ")
        if name in wanted:
            columns = [int(value) for value in values.split()]
            ticks += columns[3] + (columns[4] if len(columns) > 4 else 0)
    return ticks / TICKS


# --- reconciliation -------------------------------------------------------------------------


@dataclass
class Delivery:
    """What Postfix logged and smtp-sink counted for one run (the maillog lines since a mark)."""

    sessions: int = 0  # the front smtpd's sessions
    accepted: int = 0  # ... that ended with a message accepted (data=1)
    refused_at: Counter[str] = field(default_factory=Counter)  # the others, by the step
    warnings: Counter[str] = field(default_factory=Counter)  # the front's, addresses cut
    queued: set[str] = field(default_factory=set)
    sent: Counter[str] = field(default_factory=Counter)
    removed: set[str] = field(default_factory=set)
    received: int = 0

    @classmethod
    def parse(cls, log: str, received: int, front: str) -> Delivery:
        """The counts of `log` for the front smtpd named `front` (its syslog_name part)."""
        delivery = cls(
            queued=set(_QUEUED.findall(log)),
            sent=Counter(_SENT.findall(log)),
            removed=set(_REMOVED.findall(log)),
            received=received,
        )
        for name, counts in _DISCONNECT.findall(log):
            if name != front:
                continue
            delivery.sessions += 1
            if " data=1 " in f" {counts} ":
                delivery.accepted += 1
            else:
                failed = _FAILED.search(counts)
                delivery.refused_at[failed.group(1).upper() if failed else "?"] += 1
        for name, text in _WARNING.findall(log):
            if name == front:
                delivery.warnings[_ADDRESS.sub("", text)] += 1
        return delivery

    def settled(self, messages: int) -> bool:
        """Every session ended, every accepted message was queued and removed from the
        queue, and smtp-sink counted as many."""
        return (
            self.sessions >= messages
            and len(self.queued) >= self.accepted
            and self.removed >= self.queued
            and self.received >= len(self.queued)
        )


def problems(messages: int, sent: Sent, delivery: Delivery) -> list[str]:
    """Everything that does not add up: nothing may be lost or duplicated."""
    found = []
    if sent.returncode != 0:
        found.append(f"smtp-source exited {sent.returncode}: {sent.error}")
    if delivery.sessions != messages:
        found.append(f"smtp-source sent {messages}, the front smtpd logged {delivery.sessions}")
    if len(delivery.queued) != delivery.accepted:
        found.append(
            f"the front accepted {delivery.accepted}, Postfix queued {len(delivery.queued)}"
        )
    if unsent := delivery.queued - set(delivery.sent):
        found.append(f"{len(unsent)} queued but never delivered")
    if twice := [qid for qid, count in delivery.sent.items() if count > 1]:
        found.append(f"{len(twice)} delivered more than once")
    if delivery.received != sum(delivery.sent.values()):
        found.append(
            f"smtp-sink received {delivery.received}, Postfix delivered "
            f"{sum(delivery.sent.values())}"
        )
    return found
