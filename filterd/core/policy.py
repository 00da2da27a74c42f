"""The administrator's choices, in Postfix's own option words, validated once.

`forbid_bare_newline` takes the words of Postfix's smtpd_forbid_bare_newline (postconf(5)):
normalize, note, reject, no. Postfix's "yes" is accepted as a synonym of normalize, as
Postfix 3.9 does. `traces` takes the same kind of words: no, note, reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from filterd.core.errors import PolicyError


class BareNewline(StrEnum):
    NORMALIZE = "normalize"  # a bare LF ends a line like CRLF; a stray CR becomes a space
    NOTE = "note"  # as normalize, and the finding is logged
    REJECT = "reject"  # delayed reject at the real end of data
    NO = "no"  # pass through unchanged; for comparison only, vulnerable to smuggling

    @classmethod
    def parse(cls, word: str) -> BareNewline:
        word = word.strip().lower()
        if word == "yes":  # Postfix 3.9: "yes" is kept as a synonym of "normalize"
            return cls.NORMALIZE
        try:
            return cls(word)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            msg = f"forbid_bare_newline: {word!r} is not one of {choices}"
            raise PolicyError(msg) from None


class Traces(StrEnum):
    """What to do with a smuggled MAIL/RCPT/DATA sequence left as body text (traces.py)."""

    NO = "no"  # do not look for it
    NOTE = "note"  # log it (trace=smtp_command_sequence, trace_line=N); the scan decides
    REJECT = "reject"  # refuse the message: 550 5.7.1


class InfectedAction(StrEnum):
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    ACCEPT = "accept"  # deliver, marked with X-Virus-Status: Infected


class OversizePolicy(StrEnum):
    TEMPFAIL = "tempfail"  # larger than max_scan_size: 452 4.3.4, the sender retries
    ACCEPT = "accept"  # deliver unscanned, marked with X-Virus-Status: Unscanned


@dataclass(frozen=True, slots=True)
class Policy:
    # normalize | note | reject | no, as Postfix's smtpd_forbid_bare_newline; a fake end of
    # data is refused in every mode but "no" (comparison only: it lets smuggling through).
    forbid_bare_newline: BareNewline = BareNewline.NORMALIZE
    # Postfix: smtpd_forbid_bare_newline_reject_code (default 550; 521 also disconnects).
    bare_newline_reject_code: int = 550
    max_message_size: int = 10_240_000  # larger: 552 5.3.4 (Postfix: message_size_limit)
    infected: InfectedAction = InfectedAction.REJECT  # reject | tempfail | discard | accept
    # Over [clamd] max_scan_size: tempfail (452 4.3.4) | accept (X-Virus-Status: Unscanned).
    oversize: OversizePolicy = OversizePolicy.TEMPFAIL
    fail_open: bool = False  # a scanner error accepts the message (logged as a warning)
    # Smuggled MAIL/RCPT/DATA left as body text, both endpoints (filterd/core/traces.py):
    # no | note (logged) | reject (550 5.7.1).
    traces: Traces = Traces.NOTE

    def __post_init__(self) -> None:
        if not 500 <= self.bare_newline_reject_code <= 599:
            msg = f"bare_newline_reject_code {self.bare_newline_reject_code} is not a 5XX code"
            raise PolicyError(msg)
        if self.max_message_size <= 0:
            msg = f"max_message_size must be positive, not {self.max_message_size}"
            raise PolicyError(msg)
