"""One message: findings and a scan outcome in, one verdict out.

Delayed reject (Postfix smtpd.c): while the data streams in, findings are only recorded; the
session reads on to the real end of data and answers once. A framing reject (smuggling, bare
newline in reject mode, size, a smuggling trace with `traces = reject`) is final and skips the
scan: there is nothing to gain from scanning a message that will not be accepted.

Memory: with a `ContentBudget`, the transaction reserves the bytes it buffers as they grow and
gives them back as they shrink; when a reservation is refused it drops its content, reads on to
the real end of data, and ends with 452 4.3.1. `close()` gives everything back; it is called by
the endpoint once the message is answered and delivered (the content is needed until then), and
a finalizer does it for a transaction that is dropped without `close()`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from enum import StrEnum

from filterd.core import verdict as v
from filterd.core.budget import ContentBudget
from filterd.core.errors import InspectorError
from filterd.core.findings import Findings, Kind
from filterd.core.inspector import ContentInspector, Framing
from filterd.core.policy import BareNewline, InfectedAction, OversizePolicy, Policy, Traces
from filterd.core.traces import Trace


class ScanStatus(StrEnum):
    """What the policy needs to know of a scan. The scanner's own `ScanResult`
    (filterd/scan/result.py) is mapped to it once, in filterd/pipeline.py: the core imports
    nothing outside itself, and the scanner nothing of the core."""

    CLEAN = "clean"
    INFECTED = "infected"
    ERROR = "error"
    OVERSIZE = "oversize"  # larger than the scanner takes; not scanned


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    status: ScanStatus
    virus: str | None = None
    reason: str | None = None


_INFECTED = {
    InfectedAction.REJECT: v.REJECT_VIRUS,
    InfectedAction.TEMPFAIL: v.TEMPFAIL_VIRUS,
    InfectedAction.DISCARD: v.DISCARD_VIRUS,
    InfectedAction.ACCEPT: v.ACCEPT_VIRUS,
}
# Accepted, with the Infected header, and held: the reply carries no virus name (Postfix
# logs the hold reason, which names it: filterd/endpoints/milter/replies.py).
_HELD = {InfectedAction.QUARANTINE: v.QUARANTINE_VIRUS}


class _Reservation:
    """What one transaction holds of a budget; kept apart so a finalizer can release it."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: ContentBudget | None) -> None:
        self.budget = budget
        self.held = 0

    def resize(self, want: int) -> bool:
        """Hold `want` bytes; False (holding what it held) when the budget cannot give them."""
        if self.budget is None or want == self.held:
            return True
        if want < self.held:
            self.budget.release(self.held - want)
        elif not self.budget.reserve(want - self.held):
            return False
        self.held = want
        return True

    def release_all(self) -> None:
        if self.budget is not None and self.held:
            self.budget.release(self.held)
        self.held = 0


class Transaction:
    """Drive with `feed()` (and `finish()` for MESSAGE framing), then `framing_verdict()`;
    if that is None, scan `content()` and give the outcome to `verdict()`; `close()` at the end.

    `traces` and `infected` override the policy's words for this transaction (the milter's
    `[milter] traces` and `[milter] infected`: EndpointRules)."""

    def __init__(
        self,
        policy: Policy,
        framing: Framing = Framing.SMTP_DATA,
        *,
        budget: ContentBudget | None = None,
        traces: Traces | None = None,
        infected: InfectedAction | None = None,
    ) -> None:
        self.policy = policy
        self.traces = policy.traces if traces is None else traces
        self.infected = policy.infected if infected is None else infected
        self.inspector = ContentInspector(
            policy.forbid_bare_newline,
            framing,
            policy.max_message_size,
            traces=self.traces is not Traces.NO,
        )
        self._reservation = _Reservation(budget)
        self._finalizer = weakref.finalize(self, self._reservation.release_all)
        self._closed = False

    @property
    def findings(self) -> Findings:
        return self.inspector.findings

    @property
    def done(self) -> bool:
        return self.inspector.done

    @property
    def trace(self) -> Trace | None:
        """The first smuggled command sequence left in the content (None with traces = no)."""
        return self.inspector.trace

    @property
    def trailing(self) -> bytes:
        """Bytes that followed the end of data (a pipelined command, or smuggling)."""
        return self.inspector.trailing

    @property
    def size(self) -> int:
        """Bytes of normalised content so far (counted even past the size limit)."""
        return self.inspector.size

    @property
    def insufficient_resources(self) -> bool:
        """The content was dropped because the budget could not hold it."""
        return self.inspector.dropped

    @property
    def reserved(self) -> int:
        """Bytes this transaction holds of the budget."""
        return self._reservation.held

    def feed(self, data: bytes) -> None:
        self.inspector.feed(data)
        self._account()

    def finish(self) -> None:
        self.inspector.finish()
        self._account()

    def content(self) -> bytes:
        return self.inspector.content()

    def new_pieces(self) -> list[bytes]:
        """Normalised content finished since the last call (ContentInspector.new_pieces)."""
        return self.inspector.new_pieces()

    @property
    def dot_lines(self) -> bool:
        """A line of the content may start with "." (False: sure none does)."""
        return self.inspector.dot_lines

    @property
    def keeping(self) -> bool:
        """The content is still kept (False once refused, dropped or closed)."""
        return self.inspector.keeping and not self._closed

    def close(self) -> None:
        """The message is answered (and delivered): give its memory back. Idempotent."""
        self._closed = True
        self.inspector.release()
        self._finalizer()

    def _account(self) -> None:
        if self._closed:
            return
        if not self._reservation.resize(self.inspector.buffered):
            self.inspector.drop_content()
            self._reservation.resize(min(self.inspector.buffered, self._reservation.held))

    def framing_verdict(self) -> v.Verdict | None:
        """The verdict the content framing alone forces, or None when the scan decides."""
        if not self.inspector.done:
            raise InspectorError("framing_verdict() before the end of data")
        if self.inspector.dropped:
            return v.TEMPFAIL_INSUFFICIENT_RESOURCES
        forced = self._content_verdict()
        if forced is None and self.trace is not None and self.traces is Traces.REJECT:
            return v.REJECT_SMUGGLING_TRACE
        return forced

    def _content_verdict(self) -> v.Verdict | None:
        findings = self.inspector.findings
        mode = self.policy.forbid_bare_newline
        if Kind.TOO_LARGE in findings:
            return v.REJECT_TOO_LARGE
        if mode is BareNewline.NO:
            return None
        if Kind.FAKE_END_OF_DATA in findings or Kind.SMUGGLED_COMMAND in findings:
            return v.REJECT_SMUGGLING
        if mode is BareNewline.REJECT:
            code = self.policy.bare_newline_reject_code
            if Kind.BARE_LF in findings:
                return v.REJECT_BARE_LF.with_code(code)
            if Kind.BARE_CR in findings:
                return v.REJECT_BARE_CR.with_code(code)
        return None

    def verdict(self, scan: ScanOutcome | None) -> v.Verdict:
        """The one verdict for this message. `scan` may be None only after a framing reject."""
        forced = self.framing_verdict()
        if forced is not None:
            return forced
        if scan is None:
            raise InspectorError("verdict() needs a scan outcome: the framing did not decide")
        return self._scan_verdict(scan)

    def _scan_verdict(self, scan: ScanOutcome) -> v.Verdict:
        if scan.status is ScanStatus.CLEAN:
            return v.ACCEPT
        if scan.status is ScanStatus.INFECTED:
            return self._infected_verdict(scan.virus or "unknown")
        if scan.status is ScanStatus.OVERSIZE:
            if self.policy.oversize is OversizePolicy.ACCEPT:
                return v.ACCEPT_UNSCANNED
            return v.TEMPFAIL_TOO_LARGE_TO_SCAN
        if self.policy.fail_open:
            return v.ACCEPT_SCANNER_FAIL_OPEN
        return v.TEMPFAIL_SCANNER_UNAVAILABLE

    def _infected_verdict(self, virus: str) -> v.Verdict:
        if self.infected in _HELD:
            return _HELD[self.infected]
        return _INFECTED[self.infected].with_detail(virus)
