"""One message: findings and a scan outcome in, one verdict out.

Delayed reject (Postfix smtpd.c): while the data streams in, findings are only recorded; the
session reads on to the real end of data and answers once. A framing reject (smuggling, bare
newline in reject mode, size) is final and skips the scan: there is nothing to gain from
scanning a message that will not be accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from filterd.core import verdict as v
from filterd.core.errors import InspectorError
from filterd.core.findings import Findings, Kind
from filterd.core.inspector import ContentInspector, Framing
from filterd.core.policy import BareNewline, InfectedAction, OversizePolicy, Policy


class ScanStatus(StrEnum):
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


class Transaction:
    """Drive with `feed()` (and `finish()` for MESSAGE framing), then `framing_verdict()`;
    if that is None, scan `content()` and give the outcome to `verdict()`."""

    def __init__(self, policy: Policy, framing: Framing = Framing.SMTP_DATA) -> None:
        self.policy = policy
        self.inspector = ContentInspector(
            policy.forbid_bare_newline, framing, policy.max_message_size
        )

    @property
    def findings(self) -> Findings:
        return self.inspector.findings

    @property
    def done(self) -> bool:
        return self.inspector.done

    def feed(self, data: bytes) -> None:
        self.inspector.feed(data)

    def finish(self) -> None:
        self.inspector.finish()

    def content(self) -> bytes:
        return self.inspector.content()

    def framing_verdict(self) -> v.Verdict | None:
        """The verdict the content framing alone forces, or None when the scan decides."""
        if not self.inspector.done:
            raise InspectorError("framing_verdict() before the end of data")
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
            return _INFECTED[self.policy.infected].with_detail(scan.virus or "unknown")
        if scan.status is ScanStatus.OVERSIZE:
            if self.policy.oversize is OversizePolicy.ACCEPT:
                return v.ACCEPT_UNSCANNED
            return v.TEMPFAIL_TOO_LARGE_TO_SCAN
        if self.policy.fail_open:
            return v.ACCEPT_SCANNER_FAIL_OPEN
        return v.TEMPFAIL_SCANNER_UNAVAILABLE
