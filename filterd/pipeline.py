"""Where the core meets I/O: one message through the core, the scanner, one verdict.

The endpoints translate their protocol into the core's events (filterd/core/message.py) on a
`MessageCore` made by `Pipeline.begin()`, then await `Pipeline.decide()` once at the end of
the content, and call `MessageCore.close()` when the message is answered and delivered (the
Decision holds the content until then; close() gives its memory back to the pipeline's
`ContentBudget`). `decide()` never raises: a failure anywhere answers with a tempfail and a
logged traceback, never with an accept of unscanned mail. Each message ends with
`Pipeline.log(record)`: the one canonical log line, `MessageRecord.fields()`. Message bodies
are never logged.

This is the only module that knows both the core and the scanner: the scanner's `ScanResult`
is mapped to the core's `ScanOutcome` here, once (`to_outcome`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from filterd import __version__, metrics
from filterd.core import (
    ContentBudget,
    EndpointRules,
    Framing,
    MessageCore,
    MessageRecord,
    Policy,
    ScanOutcome,
    ScanStatus,
    Verdict,
)
from filterd.core import verdict as v
from filterd.hostname import default_hostname
from filterd.logs import get_logger
from filterd.scan import Scanner, ScanResult
from filterd.scan import ScanStatus as ScannerStatus

_log = get_logger("filterd.pipeline")

# Verdicts that mean something broke, not a decision about the mail (logged as warnings).
_FAILURE_VERDICTS = (
    v.TEMPFAIL_SCANNER_UNAVAILABLE,
    v.ACCEPT_SCANNER_FAIL_OPEN,
    v.TEMPFAIL_INTERNAL,
)


def to_outcome(result: ScanResult) -> ScanOutcome:
    """The scanner's facts as the core's policy reads them (the two statuses share values)."""
    return ScanOutcome(ScanStatus(result.status.value), virus=result.virus, reason=result.reason)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the endpoint needs to answer, to deliver on accept, and to log."""

    record: MessageRecord  # the verdict and the canonical log line's facts
    content: bytes = b""  # normalised content; empty unless the verdict accepts
    headers: tuple[tuple[str, str], ...] = ()  # to add on delivery (X-Virus-Scanned, -Status)
    dot_lines: bool = True  # a line of content may start with "." (False: sure none does)

    @property
    def verdict(self) -> Verdict:
        verdict = self.record.verdict
        if verdict is None:  # pragma: no cover - decide() always gives a verdict
            raise ValueError("a decision without a verdict")
        return verdict

    def but(self, **changes: object) -> Decision:
        """The same decision, content and headers, with `changes` to its record (another
        verdict, facts for the log line)."""
        return dataclasses.replace(self, record=self.record.but(**changes))


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
        self,
        endpoint: str,
        framing: Framing = Framing.SMTP_DATA,
        *,
        rules: EndpointRules | None = None,
    ) -> MessageCore:
        """A message charging this pipeline's budget, under the endpoint's `rules`."""
        return MessageCore(self.policy, endpoint, rules=rules, framing=framing, budget=self.budget)

    async def decide(self, message: MessageCore) -> Decision:
        """The verdict for a message whose content has ended. Never raises."""
        started = time.monotonic()
        try:
            return await self._decide(message, started)
        except Exception:
            _log.exception("message processing failed; answering with a tempfail")
            return Decision(message.failed("internal"))

    async def _decide(self, message: MessageCore, started: float) -> Decision:
        if message.framing_verdict() is not None:
            return Decision(message.decided(None))
        content = message.content()
        result = await self.scanner.scan(content)
        record = message.decided(
            to_outcome(result),
            scan_time=round(result.elapsed, 4),
            elapsed=round(time.monotonic() - started, 4),
        )
        if record.verdict is v.ACCEPT_SCANNER_FAIL_OPEN:
            _log.warning(
                "scanner failed; message accepted unscanned (fail_open)",
                size=record.size,
                scan_time=record.scan_time,
                scan_error=record.scan_error,
            )
        accepted = record.verdict is not None and record.verdict.code // 100 == 2
        headers = self._headers(result) if accepted and self.add_headers else ()
        return Decision(record, content if accepted else b"", headers, message.dot_lines)

    def _headers(self, result: ScanResult) -> tuple[tuple[str, str], ...]:
        if result.status is ScannerStatus.CLEAN:
            status = "Clean"
        elif result.status is ScannerStatus.INFECTED:
            status = f"Infected ({result.virus})"
        else:
            status = "Unscanned"
        return (("X-Virus-Scanned", self.scanned_by), ("X-Virus-Status", status))

    def log(self, record: MessageRecord) -> None:
        """The one canonical log line for a message, and the message's metrics.

        Its level follows the verdict: a scanner that failed or a failure inside filterd
        (the mail was tempfailed or let through unscanned) is a warning; the rest is info.
        """
        fields = record.fields()
        failed = record.error is not None or record.verdict in _FAILURE_VERDICTS
        if failed:
            _log.warning("message", **fields)
        else:
            _log.info("message", **fields)
        metrics.record_message(fields)


def _scanned_by(hostname: str) -> str:
    if hostname == "-":
        return f"filterd {__version__}"
    return f"filterd {__version__} at {hostname or default_hostname()}"
