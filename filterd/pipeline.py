"""Where the core meets I/O: one message through the inspector, the scanner, one verdict.

The endpoints feed a `Transaction` (made by `Pipeline.begin()`) as content arrives, then
await `Pipeline.decide()` once, and call `Transaction.close()` when the message is answered
and delivered (the Decision holds the content until then; close() gives its memory back to
the pipeline's `ContentBudget`). `decide()` never raises: a failure anywhere answers with a
tempfail and a logged traceback, never with an accept of unscanned mail. Each message ends
with `Pipeline.log()`: one canonical log line with what the endpoint adds (client, sender,
downstream queue id). Message bodies are never logged.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

from filterd import __version__
from filterd.core import (
    BareNewline,
    ContentBudget,
    Framing,
    Policy,
    ScanOutcome,
    ScanStatus,
    Traces,
    Transaction,
    Verdict,
)
from filterd.core import verdict as v
from filterd.logs import get_logger
from filterd.scan import Scanner, ScanResult
from filterd.scan import ScanStatus as ScannerStatus

_log = get_logger("filterd.pipeline")

_STATUS = {
    ScannerStatus.CLEAN: ScanStatus.CLEAN,
    ScannerStatus.INFECTED: ScanStatus.INFECTED,
    ScannerStatus.ERROR: ScanStatus.ERROR,
    ScannerStatus.OVERSIZE: ScanStatus.OVERSIZE,
}


def to_outcome(result: ScanResult) -> ScanOutcome:
    return ScanOutcome(_STATUS[result.status], virus=result.virus, reason=result.reason)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the endpoint needs to answer and, on accept, to deliver."""

    verdict: Verdict
    content: bytes  # normalised content; empty unless the verdict accepts
    headers: list[tuple[str, str]]  # to add on delivery (X-Virus-Scanned, X-Virus-Status)
    fields: dict[str, Any] = field(default_factory=dict)  # for the canonical log line


class Pipeline:
    def __init__(
        self,
        policy: Policy,
        scanner: Scanner,
        *,
        add_headers: bool = True,
        hostname: str = "",
        budget: ContentBudget | None = None,
    ) -> None:
        self.policy = policy
        self.scanner = scanner
        self.add_headers = add_headers
        self.scanned_by = _scanned_by(hostname)
        self.budget = budget  # None: content memory is not bounded

    def begin(
        self, framing: Framing = Framing.SMTP_DATA, *, traces: Traces | None = None
    ) -> Transaction:
        """A transaction charging this pipeline's budget; `traces` overrides the policy's."""
        return Transaction(self.policy, framing, budget=self.budget, traces=traces)

    async def decide(self, txn: Transaction) -> Decision:
        """The verdict for a transaction whose content has ended. Never raises."""
        started = time.monotonic()
        try:
            return await self._decide(txn, started)
        except Exception:
            _log.exception("message processing failed; answering with a tempfail")
            return Decision(v.TEMPFAIL_INTERNAL, b"", [], {"error": "internal"})

    async def _decide(self, txn: Transaction, started: float) -> Decision:
        fields: dict[str, Any] = {"size": txn.inspector.size}
        findings = txn.findings.kinds()
        forced = txn.framing_verdict()
        if txn.trace is not None:  # filterd/core/traces.py
            if forced is not v.REJECT_SMUGGLING_TRACE:  # that reason already says it
                fields["trace"] = "smtp_command_sequence"
            fields["trace_line"] = txn.trace.line
        if forced is not None:
            fields["findings"] = findings
            return Decision(forced, b"", [], fields)
        if findings and self.policy.forbid_bare_newline is not BareNewline.NORMALIZE:
            fields["findings"] = findings  # Postfix's "note" logs; "normalize" stays quiet
        content = txn.content()
        result = await self.scanner.scan(content)
        fields["scan_time"] = round(result.elapsed, 4)
        if result.virus:
            fields["virus"] = result.virus
        if result.reason:
            fields["scan_error"] = result.reason
        verdict = txn.verdict(to_outcome(result))
        if verdict is v.ACCEPT_SCANNER_FAIL_OPEN:
            _log.warning("scanner failed; message accepted unscanned (fail_open)", **fields)
        fields["elapsed"] = round(time.monotonic() - started, 4)
        accepted = verdict.code // 100 == 2
        headers = self._headers(result) if accepted and self.add_headers else []
        return Decision(verdict, content if accepted else b"", headers, fields)

    def _headers(self, result: ScanResult) -> list[tuple[str, str]]:
        if result.status is ScannerStatus.CLEAN:
            status = "Clean"
        elif result.status is ScannerStatus.INFECTED:
            status = f"Infected ({result.virus})"
        else:
            status = "Unscanned"
        return [("X-Virus-Scanned", self.scanned_by), ("X-Virus-Status", status)]

    def log(self, decision: Decision, endpoint: str, **extra: Any) -> None:
        """The one canonical log line for a message."""
        verdict = decision.verdict
        _log.info(
            "message",
            endpoint=endpoint,
            action=verdict.action.value,
            reply=verdict.reply,
            reason=verdict.reason,
            **decision.fields,
            **extra,
        )


def _scanned_by(hostname: str) -> str:
    if hostname == "-":
        return f"filterd {__version__}"
    return f"filterd {__version__} at {hostname or socket.gethostname()}"
