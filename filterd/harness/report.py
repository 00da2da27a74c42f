"""The run report: a table for people, JSON for machines.

The table is compact by default: one row per probe, one line for each probe that let a
smuggled message through (or could not run), and the verdict line. With `evidence` it also
shows the run's settings and, for every probe, the exact bytes sent and every reply, as Python
bytes literals (repr), so every CR, LF and NUL is visible and can be pasted back into a test.
JSON always holds the transcripts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from filterd.harness.catalogue import Values
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
    values: Values  # the envelope, HELO name and run token the probes were sent with
    timeout: float
    pause: float
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
        "from": run.values.sender,
        "to": run.values.recipient,
        "smuggled_from": run.values.smuggled_sender,
        "helo": run.values.helo,
        "run": run.values.run,
        "timeout": run.timeout,
        "pause": run.pause,
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


def _flagged(run: Run) -> list[Result]:
    """The probes the exit status is about: EXPLOITABLE, then ERROR."""
    order = ("EXPLOITABLE", "ERROR")
    return sorted(
        (r for r in run.results if r.decision.verdict.value in order),
        key=lambda r: order.index(r.decision.verdict.value),
    )


def _ids(run: Run, verdict: str) -> str:
    return " ".join(r.probe.id for r in run.results if r.decision.verdict.value == verdict)


def verdict_line(run: Run) -> str:
    if run.exit_code == 1:
        return f"verdict: EXPLOITABLE: {_ids(run, 'EXPLOITABLE')} (exit 1)"
    if run.exit_code == 2:
        return f"verdict: INCOMPLETE: could not run {_ids(run, 'ERROR')} (exit 2)"
    return f"verdict: no smuggled message got through in {len(run.results)} probes (exit 0)"


def _head(run: Run, evidence: bool) -> list[str]:
    if not evidence:
        return [f"target {run.target} ({run.greeting}) from {run.source_address}", ""]
    return [
        f"target {run.target} from source address {run.source_address}",
        f"greeting: {run.greeting}",
        f"EHLO keywords: {' '.join(run.keywords)}",
        f"MAIL FROM:<{run.values.sender}> RCPT TO:<{run.values.recipient}>",
        f"smuggled sender <{run.values.smuggled_sender}>",
        f"run {run.values.run}, window {run.timeout:g} s per probe, pause {run.pause:g} s",
        "",
    ]


def to_table(run: Run, evidence: bool = False) -> str:
    """The compact report, or with `evidence` the full one."""
    lines = _head(run, evidence) + _columns(_summary_rows(run)) + [""]
    if evidence:
        lines.append("Evidence (seconds since connect; > sent, < received):")
        for result in run.results:
            lines.extend(_evidence(result, run.sink))
        verdicts = Counter(r.decision.verdict.value for r in run.results)
        lines += ["", "summary: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))]
    else:
        lines += [
            f"{r.probe.id} {r.decision.verdict.value}: {r.decision.reason}" for r in _flagged(run)
        ]
    lines.append(verdict_line(run))
    return "\n".join(lines)
