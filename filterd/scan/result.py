"""What a scan or a health check found, as plain facts.

The scanner reports; it never decides. Mapping a result to a verdict (fail-open or
fail-closed, what to do with oversize mail) belongs to the pipeline. The one rule that
holds here: a result is CLEAN only when the scanner said so in as many words; every
other outcome, including the ones nobody foresaw, is ERROR.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# Reasons end up in SMTP replies and log lines; keep them on one short line.
MAX_TEXT_LENGTH = 200


def is_short_line(text: str) -> bool:
    return 0 < len(text) <= MAX_TEXT_LENGTH and text.isascii() and text.isprintable()


class ScanStatus(enum.Enum):
    CLEAN = "clean"
    INFECTED = "infected"
    ERROR = "error"
    OVERSIZE = "oversize"


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One scan's outcome.

    `virus` is set only for INFECTED; `reason` only for ERROR and OVERSIZE, and it is a
    short ASCII line that never quotes the message. `elapsed` is wall-clock seconds,
    queue wait included. `address` is the clamd that answered, or the last one that failed
    (`unix:...`, `tcp:...`); None when no clamd was asked (oversize, scanner busy).
    """

    status: ScanStatus
    virus: str | None = None
    reason: str | None = None
    elapsed: float = 0.0
    # Where, not what: two results that found the same are equal wherever they came from.
    address: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.status is ScanStatus.INFECTED) != (self.virus is not None):
            raise ValueError("virus is set exactly when the status is INFECTED")
        needs_reason = self.status in (ScanStatus.ERROR, ScanStatus.OVERSIZE)
        if needs_reason != (self.reason is not None):
            raise ValueError("reason is set exactly when the status is ERROR or OVERSIZE")
        for text in (self.virus, self.reason):
            if text is not None and not is_short_line(text):
                raise ValueError(f"not a short printable ASCII line: {text!r}")

    @classmethod
    def clean(cls, elapsed: float = 0.0) -> ScanResult:
        return cls(ScanStatus.CLEAN, elapsed=elapsed)

    @classmethod
    def infected(cls, virus: str, elapsed: float = 0.0) -> ScanResult:
        return cls(ScanStatus.INFECTED, virus=virus, elapsed=elapsed)

    @classmethod
    def error(cls, reason: str, elapsed: float = 0.0) -> ScanResult:
        return cls(ScanStatus.ERROR, reason=reason, elapsed=elapsed)

    @classmethod
    def oversize(cls, reason: str, elapsed: float = 0.0) -> ScanResult:
        return cls(ScanStatus.OVERSIZE, reason=reason, elapsed=elapsed)
