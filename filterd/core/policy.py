"""The administrator's choices, in Postfix's own option words, validated once.

`forbid_bare_newline` takes the words of Postfix's smtpd_forbid_bare_newline (postconf(5)):
normalize, note, reject, no. Postfix's "yes" is accepted as a synonym of normalize, as
Postfix 3.9 does. `traces` takes the same kind of words: no, note, reject.

`Policy` is the `[filter]` section, shared by both endpoints. `EndpointRules` is what one
endpoint sets apart from it (the milter's `[milter] infected`, `traces` and bypass): the core
applies both (filterd/core/message.py), so every policy is decided in one place.
"""

from __future__ import annotations

import ipaddress
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
    # Marked as accept, and put on Postfix's hold queue: only an endpoint that can hold
    # (the milter's SMFIR_QUARANTINE) takes it, never [filter] (EndpointRules.can_hold).
    QUARANTINE = "quarantine"


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
        if self.infected is InfectedAction.QUARANTINE:
            # [filter] is shared: the proxy answers before anything is queued and cannot hold.
            msg = "infected: 'quarantine' needs Postfix's hold queue; set it in [milter] infected"
            raise PolicyError(msg)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class EndpointRules:
    """What one endpoint sets apart from `[filter]`, checked once at startup.

    The core decides with these; the endpoint only supplies facts (the client's address,
    a SASL login) and renders the verdict.
    """

    infected: InfectedAction | None = None  # None: [filter] infected
    traces: Traces | None = None  # None: [filter] traces
    bypass_networks: tuple[Network, ...] = ()  # clients in these networks are not scanned
    bypass_authenticated: bool = False  # SASL-authenticated senders are not scanned
    can_hold: bool = False  # the endpoint can put a message on hold (infected = quarantine)

    def __post_init__(self) -> None:
        if self.infected is InfectedAction.QUARANTINE and not self.can_hold:
            msg = "infected: 'quarantine' is possible only where the endpoint can hold mail"
            raise PolicyError(msg)

    def infected_action(self, policy: Policy) -> InfectedAction:
        return policy.infected if self.infected is None else self.infected

    def traces_word(self, policy: Policy) -> Traces:
        return policy.traces if self.traces is None else self.traces

    def bypass(self, client: Address | None, *, authenticated: bool) -> str:
        """Why a message is exempt from scanning ("network", "authenticated"), or ""."""
        if client is not None and any(client in network for network in self.bypass_networks):
            return "network"
        if self.bypass_authenticated and authenticated:
            return "authenticated"
        return ""
