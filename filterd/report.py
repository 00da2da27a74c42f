"""`filterd report [LOG ...]`: a pflogsumm-style summary of filterd's own log lines.

Reads JSON log lines (stderr with `[log] format = "json"`) and the syslog form
(`... filterd[PID]: {JSON}`, as /var/log/mail.log holds them, docs/reference/log-fields.md);
every other line (Postfix's, other programs') is skipped and counted. Files ending in `.gz`
are read compressed (logrotate's old logs); `-` or no file reads standard input.

The summary counts the canonical `message` lines: by endpoint and action, by reason, viruses
by name, framing rejects (smuggling, bare LF/CR, pipelining) and the clients that sent them,
scanner errors by reason and clamd address, scan-time percentiles, and messages per hour.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from filterd.core import verdict as v

# Reasons of a message refused for its framing (docs/reference/verdicts.md).
FRAMING_REASONS = frozenset(
    verdict.reason
    for verdict in (
        v.REJECT_BARE_LF,
        v.REJECT_BARE_CR,
        v.REJECT_SMUGGLING,
        v.REJECT_SMUGGLING_TRACE,
        v.REJECT_PIPELINING,
    )
)
# `proxy session` events about a client's command framing (filterd/core/smtp/machine.py).
SESSION_FINDINGS = frozenset({"pipelining", "bare_lf_command"})
# The syslog tag of a filterd line, then the JSON body (filterd/logs.py).
_SYSLOG = re.compile(r"\bfilterd\[\d+\]: (\{.*\})\s*$")
TOP = 10  # rows kept in the "top" tables


def parse_line(line: str) -> dict[str, Any] | None:
    """filterd's event in a log line, or None for anyone else's line."""
    text = line.strip()
    if not text.startswith("{"):
        match = _SYSLOG.search(text)
        if match is None:
            return None
        text = match[1]
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


@dataclass
class Summary:
    lines: int = 0
    skipped: int = 0  # lines not filterd's (Postfix's, ...) or not readable
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, action)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, reason)
    viruses: Counter[str] = field(default_factory=Counter)
    framing: Counter[str] = field(default_factory=Counter)  # reason or session finding
    framing_clients: Counter[str] = field(default_factory=Counter)
    scan_errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, address)
    scan_times: list[float] = field(default_factory=list)
    hours: Counter[str] = field(default_factory=Counter)  # "YYYY-MM-DD HH" (UTC)
    warnings: Counter[str] = field(default_factory=Counter)  # other warning/error events
    # (session, client) of `proxy session` pipelining lines: the message line that a
    # pipelining reject at END-OF-DATA logs next is the same attempt, counted once.
    pipelined: set[tuple[str, str]] = field(default_factory=set)

    def add(self, event: dict[str, Any]) -> None:
        if event["event"] == "message":
            self._message(event)
        elif event["event"] == "proxy session" and event.get("what") in SESSION_FINDINGS:
            self.framing[str(event["what"])] += 1
            self.framing_clients[str(event.get("peer"))] += 1
            if event["what"] == "pipelining":
                self.pipelined.add((str(event.get("session")), str(event.get("peer"))))
        elif event.get("level") in ("warning", "error", "critical"):
            self.warnings[str(event["event"])] += 1

    def _message(self, event: dict[str, Any]) -> None:
        action, reason = str(event.get("action")), str(event.get("reason"))
        self.messages[(str(event.get("endpoint")), action)] += 1
        self.reasons[(action, reason)] += 1
        if event.get("virus"):
            self.viruses[str(event["virus"])] += 1
        attempt = (str(event.get("session")), str(event.get("client")))
        if reason == v.REJECT_PIPELINING.reason and attempt in self.pipelined:
            self.pipelined.discard(attempt)  # counted from its `proxy session` line
        elif reason in FRAMING_REASONS:
            self.framing[reason] += 1
            self.framing_clients[str(event.get("client"))] += 1
        if event.get("scan_error"):
            self.scan_errors[(str(event["scan_error"]), str(event.get("clamd", "-")))] += 1
        if isinstance(event.get("scan_time"), (int, float)):
            self.scan_times.append(float(event["scan_time"]))
        stamp = str(event.get("timestamp", ""))
        if len(stamp) >= 13:
            self.hours[f"{stamp[:10]} {stamp[11:13]}"] += 1

    def totals(self) -> Counter[str]:
        """Messages by action over all endpoints (accept, reject, tempfail, ...)."""
        found: Counter[str] = Counter()
        for (_, action), n in self.messages.items():
            found[action] += n
        return found

    def scan_time_figures(self) -> dict[str, float] | None:
        """Median, 95th percentile and maximum scan time in seconds (None: no scans)."""
        times = sorted(self.scan_times)
        if not times:
            return None
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        return {"median": statistics.median(times), "p95": p95, "max": times[-1]}

    def as_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "skipped": self.skipped,
            "messages": sum(self.messages.values()),
            "by_action": dict(self.totals()),
            "by_endpoint": _nested(self.messages),
            "by_reason": _nested(self.reasons),
            "viruses": dict(self.viruses.most_common()),
            "framing": dict(self.framing.most_common()),
            "framing_clients": dict(self.framing_clients.most_common(TOP)),
            "scan_errors": [
                {"reason": reason, "clamd": address, "count": n}
                for (reason, address), n in self.scan_errors.most_common()
            ],
            "scan_time": self.scan_time_figures(),
            "hours": dict(sorted(self.hours.items())),
            "warnings": dict(self.warnings.most_common()),
        }


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), n in sorted(counts.items()):
        nested.setdefault(outer, {})[inner] = n
    return nested


def summarize(lines: Iterable[str]) -> Summary:
    summary = Summary()
    for line in lines:
        summary.lines += 1
        event = parse_line(line)
        if event is None:
            summary.skipped += 1
        else:
            summary.add(event)
    return summary


def render(summary: Summary) -> str:
    """The summary as text tables, pflogsumm's order: totals first, then details."""
    out: list[str] = ["filterd report", "=============="]
    totals = summary.totals()
    out += ["", "Messages", "--------", f"{sum(totals.values()):8d}  total"]
    out += [f"{n:8d}  {action}" for action, n in sorted(totals.items())]
    out += _table("Messages by endpoint and action", summary.messages)
    out += _table("Messages by action and reason", summary.reasons)
    out += _table("Viruses", Counter({(name,): n for name, n in summary.viruses.items()}))
    out += _table(
        "Framing rejects and findings", Counter({(k,): n for k, n in summary.framing.items()})
    )
    out += _table(
        "Clients with framing rejects",
        Counter({(k,): n for k, n in summary.framing_clients.most_common(TOP)}),
    )
    out += _table("Scanner errors (reason, clamd)", summary.scan_errors)
    figures = summary.scan_time_figures()
    out += ["", "Scan time", "---------"]
    if figures is None:
        out.append("       none")
    else:
        out += [f"{figures[name] * 1000:10.1f} ms  {name}" for name in ("median", "p95", "max")]
    out += _table(
        "Messages per hour (UTC)", Counter({(h,): n for h, n in summary.hours.items()}), by_key=True
    )
    out += _table("Other warnings", Counter({(k,): n for k, n in summary.warnings.items()}))
    out += ["", f"{summary.lines} lines read, {summary.skipped} not filterd's (skipped)"]
    return "\n".join(out) + "\n"


def _table(title: str, counts: Counter[Any], *, by_key: bool = False) -> list[str]:
    rows = (
        sorted(counts.items()) if by_key else sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    lines = ["", title, "-" * len(title)]
    if not rows:
        return [*lines, "       none"]
    return [*lines, *(f"{n:8d}  {'  '.join(key)}" for key, n in rows)]


def read_lines(names: list[str], stdin: TextIO) -> Iterator[str]:
    for name in names or ["-"]:
        if name == "-":
            yield from stdin
        elif name.endswith(".gz"):
            with gzip.open(name, "rt", errors="replace") as handle:
                yield from handle
        else:
            with Path(name).open(errors="replace") as handle:
                yield from handle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="*", metavar="LOG", help="log files (.gz too); - is stdin")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        summary = summarize(read_lines(args.logs, sys.stdin))
    except OSError as exc:
        sys.stderr.write(f"filterd report: {exc.filename}: {exc.strerror}\n")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(summary.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write(render(summary))
    return 0
