"""The run report: a table for people, JSON for machines. Both show the exact bytes sent.

Bytes are shown as Python bytes literals (repr), so every CR, LF and NUL is visible and the
text can be pasted back into a test (smuggling.md §8.4 item 1).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from filterd.harness.client import Sent
from filterd.harness.probe import Result
from filterd.harness.reply import Reply
from filterd.harness.sink import Arrivals


@dataclass(frozen=True)
class Run:
    target: str
    greeting: str
    keywords: tuple[str, ...]
    source_address: str
    sender: str
    recipient: str
    smuggled_sender: str
    helo: str
    run: str
    timeout: float
    warnings: tuple[str, ...]
    results: tuple[Result, ...]
    sink: dict[str, Arrivals] | None  # probe id -> arrivals, when --sink was given
    exit_code: int


def _event(event: Sent | Reply) -> dict[str, Any]:
    if isinstance(event, Sent):
        return {"at": round(event.at, 4), "sent": repr(event.data)}
    return {"at": round(event.at, 4), "code": event.code, "lines": list(event.lines)}


def _probe_json(result: Result, sink: dict[str, Arrivals] | None) -> dict[str, Any]:
    probe = result.probe
    arrived = sink.get(probe.id) if sink is not None else None
    return {
        "id": probe.id,
        "kind": probe.kind.value,
        "stage": probe.stage.value,
        "rule": probe.rule.value,
        "source": probe.source,
        "target": probe.target,
        "sequence": repr(probe.sequence),
        "verdict": result.decision.verdict.value,
        "reason": result.decision.reason,
        "accepted_messages": result.decision.accepted,
        "sink": None if arrived is None else {"total": arrived.total, "smuggled": arrived.smuggled},
        "transcript": [_event(event) for event in result.transcript],
    }


def to_json(run: Run) -> str:
    verdicts = Counter(r.decision.verdict.value for r in run.results)
    document = {
        "target": run.target,
        "greeting": run.greeting,
        "keywords": list(run.keywords),
        "source_address": run.source_address,
        "from": run.sender,
        "to": run.recipient,
        "smuggled_from": run.smuggled_sender,
        "helo": run.helo,
        "run": run.run,
        "timeout": run.timeout,
        "warnings": list(run.warnings),
        "probes": [_probe_json(result, run.sink) for result in run.results],
        "summary": dict(sorted(verdicts.items())),
        "exploitable": [
            r.probe.id for r in run.results if r.decision.verdict.value == "EXPLOITABLE"
        ],
        "exit_code": run.exit_code,
    }
    return json.dumps(document, indent=2)


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]


def _summary_rows(run: Run) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("ID", "KIND", "VERDICT", "SEQUENCE")]
    for result in run.results:
        probe = result.probe
        rows.append(
            (probe.id, probe.kind.value, result.decision.verdict.value, repr(probe.sequence))
        )
    return rows


def _evidence(result: Result, sink: dict[str, Arrivals] | None) -> list[str]:
    probe = result.probe
    lines = [f"{probe.id} {result.decision.verdict.value}: {result.decision.reason}"]
    if sink is not None and probe.id in sink:
        arrived = sink[probe.id]
        lines.append(f"    sink: {arrived.total} message(s) arrived, {arrived.smuggled} smuggled")
    for event in result.transcript:
        if isinstance(event, Sent):
            lines.append(f"    {event.at:7.3f} > {event.data!r}")
        else:
            lines.append(f"    {event.at:7.3f} < {event.show()}")
    return lines


def to_table(run: Run) -> str:
    head = [
        f"target {run.target} from source address {run.source_address}",
        f"greeting: {run.greeting}",
        f"EHLO keywords: {' '.join(run.keywords)}",
        f"MAIL FROM:<{run.sender}> RCPT TO:<{run.recipient}>",
        f"smuggled sender <{run.smuggled_sender}>",
        f"run {run.run}, window {run.timeout:g} s per probe",
        *(f"WARNING: {warning}" for warning in run.warnings),
        "",
    ]
    body = _columns(_summary_rows(run))
    evidence = ["", "Evidence (seconds since connect; > sent, < received):"]
    for result in run.results:
        evidence.extend(_evidence(result, run.sink))
    verdicts = Counter(r.decision.verdict.value for r in run.results)
    tail = [
        "",
        "summary: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())),
        f"exit code {run.exit_code}",
    ]
    return "\n".join(head + body + evidence + tail)
