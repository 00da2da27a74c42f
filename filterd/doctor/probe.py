"""`--probe HOST:PORT`: the smuggling harness against the live front port, as a library call.

This is `filterd smuggle HOST:PORT` without its report: the same catalogue, one probe at a
time, the same verdicts (filterd/harness/verdict.py). Probes send real messages to
postmaster@<the greeting's hostname>, so the mailbox there receives a few test messages.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from filterd.doctor.findings import PROBE, Finding, Severity
from filterd.harness import catalogue, session
from filterd.harness.catalogue import Values
from filterd.harness.probe import run_probe
from filterd.harness.session import SetupError, Target
from filterd.harness.verdict import Verdict

HELO = "filterd-doctor.invalid"


@dataclass(frozen=True, slots=True)
class ProbeRun:
    target: str
    source_address: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)  # probe id -> verdict word
    reasons: dict[str, str] = field(default_factory=dict)  # probe id -> the harness's reason
    error: str = ""  # set when the target could not be reached at all

    def with_verdict(self, verdict: Verdict) -> list[str]:
        return [i for i, v in self.verdicts.items() if v == verdict.value]

    @property
    def summary(self) -> dict[str, int]:
        return dict(sorted(Counter(self.verdicts.values()).items()))


def known(probe_id: str) -> bool:
    return probe_id.upper() in catalogue.BY_ID


def run(host: str, port: int, timeout: float = 3.0, ids: Sequence[str] = ()) -> ProbeRun:
    """Run the catalogue (or the probes `ids`) against HOST:PORT."""
    name = f"{host}:{port}"
    target = Target(host, port, timeout)
    try:
        found = session.discover(target, HELO)
    except (OSError, SetupError) as exc:
        return ProbeRun(name, error=f"cannot talk to {name}: {exc}")
    if not found.hostname:
        return ProbeRun(name, error=f"{name} gives no hostname in its greeting")
    address = f"postmaster@{found.hostname}"
    values = Values(
        sender=address,
        recipient=address,
        smuggled_sender=address,
        helo=HELO,
        run=secrets.token_hex(catalogue.RUN_TOKEN_LENGTH // 2),
    )
    probes = [catalogue.BY_ID[i.upper()] for i in ids] if ids else list(catalogue.CATALOGUE)
    verdicts, reasons = {}, {}
    for probe in probes:  # one at a time: one connection to the target at most
        result = run_probe(probe, target, values)
        verdicts[probe.id] = result.decision.verdict.value
        reasons[probe.id] = result.decision.reason
    return ProbeRun(name, found.local_address, verdicts, reasons)


def findings(outcome: ProbeRun) -> list[Finding]:
    if outcome.error:
        return [Finding("probe", Severity.ERROR, PROBE, outcome.error)]
    source = f" from {outcome.source_address}" if outcome.source_address else ""
    exploitable = outcome.with_verdict(Verdict.EXPLOITABLE)
    result = []
    if exploitable:
        message = (
            f"EXPLOITABLE: the harness smuggled a message through {outcome.target}{source}"
            f" with {' '.join(exploitable)}"
        )
        fix = f"filterd smuggle {outcome.target} (the transcripts); fix the findings above"
        result.append(Finding("probe", Severity.ERROR, PROBE, message, fix))
    failed = outcome.with_verdict(Verdict.ERROR)
    if failed:
        reasons = "; ".join(f"{i}: {outcome.reasons[i]}" for i in failed[:3])
        message = f"{len(failed)} probe(s) could not run ({reasons})"
        result.append(Finding("probe", Severity.WARNING, PROBE, message))
    if not result:
        counts = ", ".join(f"{word} {n}" for word, n in outcome.summary.items())
        message = f"no smuggled message got through {outcome.target}{source} ({counts})"
        result.append(Finding("probe", Severity.INFO, PROBE, message))
    return result
