"""One verdict type and the catalogue of every verdict filterd can give.

A verdict is what the endpoint answers the MTA: an action, an SMTP reply code (RFC 5321
§4.2), an enhanced status code (RFC 3463) and a one-line ASCII text. `reason` is a stable key
for logs and metrics. Endpoints render a verdict into their own format (an SMTP reply line,
a milter response); they never write reply texts of their own.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum

from filterd.core.errors import PolicyError


class Action(StrEnum):
    ACCEPT = "accept"
    TEMPFAIL = "tempfail"
    REJECT = "reject"
    DISCARD = "discard"


# RFC 5321 §4.2.1: the first digit of a reply code gives its class.
CODE_CLASS = {Action.ACCEPT: 2, Action.DISCARD: 2, Action.TEMPFAIL: 4, Action.REJECT: 5}

# Printable ASCII without controls; anything else in a text (a virus name from clamd, say) is
# replaced, so a reply can never carry CR, LF or 8-bit bytes onto the wire.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(text: str) -> str:
    """Make `text` safe as (part of) a one-line ASCII reply text."""
    return _UNPRINTABLE.sub("?", text)


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    code: int
    status: str  # RFC 3463 enhanced status code, e.g. "5.7.1"
    text: str
    reason: str  # stable key for logs and metrics

    @property
    def reply(self) -> str:
        """The SMTP reply line, without CRLF: `550 5.7.1 Virus found: X`."""
        return f"{self.code} {self.status} {self.text}"

    def with_code(self, code: int) -> Verdict:
        """The same verdict with another code of the same class.

        Postfix: smtpd_forbid_bare_newline_reject_code must be a 5XX code (521 disconnects).
        """
        if code // 100 != self.code // 100:
            msg = f"reply code {code} is not in the {self.code // 100}XX class of {self.reason}"
            raise PolicyError(msg)
        return dataclasses.replace(self, code=code)

    def with_detail(self, detail: str) -> Verdict:
        """The same verdict with `detail` (e.g. a virus name) appended to its text."""
        return dataclasses.replace(self, text=f"{self.text}: {printable(detail)}")


ACCEPT = Verdict(Action.ACCEPT, 250, "2.0.0", "Ok", "accepted")
# Postfix: smtpd_forbid_bare_newline = reject, "Error: bare <LF> received" (RFC 5321 §2.3.8).
REJECT_BARE_LF = Verdict(Action.REJECT, 550, "5.5.2", "Error: bare <LF> received", "bare_lf")
REJECT_BARE_CR = Verdict(Action.REJECT, 550, "5.5.2", "Error: bare <CR> received", "bare_cr")
# RFC 5321 §4.1.1.4: only <CRLF>.<CRLF> ends the mail data.
REJECT_SMUGGLING = Verdict(
    Action.REJECT,
    550,
    "5.5.2",
    "Error: non-standard end-of-data sequence (SMTP smuggling)",
    "smuggling",
)
# Postfix: smtpd_forbid_unauth_pipelining; RFC 2920 §3.1.
REJECT_PIPELINING = Verdict(
    Action.REJECT, 554, "5.5.0", "Error: SMTP protocol synchronization", "pipelining"
)
# Postfix: message_size_limit, "552 5.3.4 Error: message file too big".
REJECT_TOO_LARGE = Verdict(Action.REJECT, 552, "5.3.4", "Error: message file too big", "too_large")
REJECT_VIRUS = Verdict(Action.REJECT, 550, "5.7.1", "Virus found", "virus")
TEMPFAIL_VIRUS = Verdict(Action.TEMPFAIL, 451, "4.7.1", "Virus found", "virus")
DISCARD_VIRUS = Verdict(Action.DISCARD, 250, "2.0.0", "Ok", "virus_discarded")
ACCEPT_VIRUS = Verdict(Action.ACCEPT, 250, "2.0.0", "Ok", "virus_accepted")
TEMPFAIL_SCANNER_UNAVAILABLE = Verdict(
    Action.TEMPFAIL, 451, "4.7.1", "Error: virus scanner unavailable, try again later", "scan_error"
)
ACCEPT_SCANNER_FAIL_OPEN = Verdict(Action.ACCEPT, 250, "2.0.0", "Ok", "scan_error_fail_open")
TEMPFAIL_TOO_LARGE_TO_SCAN = Verdict(
    Action.TEMPFAIL, 452, "4.3.4", "Error: message too large to scan", "too_large_to_scan"
)
# The content-memory budget is spent (filterd/core/budget.py). Postfix: smtpd's reply when the
# queue file system is short of space, "452 4.3.1 Error: insufficient system resources".
TEMPFAIL_INSUFFICIENT_RESOURCES = Verdict(
    Action.TEMPFAIL,
    452,
    "4.3.1",
    "Error: insufficient system resources",
    "insufficient_resources",
)
ACCEPT_UNSCANNED = Verdict(Action.ACCEPT, 250, "2.0.0", "Ok", "unscanned_too_large")
TEMPFAIL_INTERNAL = Verdict(
    Action.TEMPFAIL, 451, "4.3.0", "Error: internal error in mail filter", "internal_error"
)
TEMPFAIL_DOWNSTREAM_UNREACHABLE = Verdict(
    Action.TEMPFAIL, 451, "4.4.1", "Error: next hop unreachable, try again later", "downstream"
)
TEMPFAIL_TOO_MANY_CONNECTIONS = Verdict(
    Action.TEMPFAIL, 421, "4.7.0", "Error: too many connections", "too_many_connections"
)

# Milter only: infected mail put on Postfix's hold queue (SMFIR_QUARANTINE), then accepted.
QUARANTINE_VIRUS = Verdict(Action.ACCEPT, 250, "2.0.0", "Ok", "virus_quarantined")
# A smuggled MAIL/RCPT/DATA sequence left as body text (filterd/core/traces.py).
REJECT_SMUGGLING_TRACE = Verdict(
    Action.REJECT,
    550,
    "5.7.1",
    "Error: message contains an SMTP command sequence (SMTP smuggling)",
    "smuggling_trace",
)
# Milter only: the client network or SASL login is exempt from scanning (by configuration).
ACCEPT_BYPASS = Verdict(Action.ACCEPT, 250, "2.0.0", "Ok", "bypass")

# SMTP command phase (the proxy endpoint facing a client). RFC 5321 §4.2.2 and §4.2.3 codes,
# Postfix smtpd's texts where it has one.
REJECT_UNKNOWN_COMMAND = Verdict(
    Action.REJECT, 502, "5.5.2", "Error: command not recognized", "unknown_command"
)
REJECT_NOT_IMPLEMENTED = Verdict(
    Action.REJECT, 502, "5.5.1", "Error: command not implemented", "not_implemented"
)
REJECT_SYNTAX = Verdict(Action.REJECT, 501, "5.5.2", "Error: bad syntax", "syntax")
# RFC 5321 §4.5.3.1.4 (command line) and Postfix line_length_limit.
REJECT_LINE_TOO_LONG = Verdict(Action.REJECT, 500, "5.5.0", "Error: line too long", "line_too_long")
REJECT_BAD_SEQUENCE = Verdict(
    Action.REJECT, 503, "5.5.1", "Error: bad sequence of commands", "bad_sequence"
)
REJECT_NO_RECIPIENTS = Verdict(
    Action.REJECT, 554, "5.5.1", "Error: no valid recipients", "no_recipients"
)
# Postfix: smtpd_timeout, "421 4.4.2 <host> Error: timeout exceeded".
TEMPFAIL_TIMEOUT = Verdict(Action.TEMPFAIL, 421, "4.4.2", "Error: timeout exceeded", "timeout")
# Postfix: smtpd_hard_error_limit, "421 4.7.0 <host> Error: too many errors".
TEMPFAIL_TOO_MANY_ERRORS = Verdict(
    Action.TEMPFAIL, 421, "4.7.0", "Error: too many errors", "too_many_errors"
)
TEMPFAIL_SHUTTING_DOWN = Verdict(
    Action.TEMPFAIL, 421, "4.3.2", "Error: service shutting down", "shutting_down"
)
# The reinjection smtpd broke off after it was reached (Postfix itself says 451 4.3.0 when its
# proxy fails: docs/explanation/proxy.md).
TEMPFAIL_DOWNSTREAM_FAILED = Verdict(
    Action.TEMPFAIL, 451, "4.3.0", "Error: next hop failed, try again later", "downstream_failed"
)

# --- proxy endpoint (issue 9): what the log line says when the client was told something
# other than filterd's own verdict. The two downstream verdicts are templates: the proxy
# relays the reinjection smtpd's own reply and logs it with these actions and reasons
# (filterd/endpoints/proxy/downstream.py, `refusal`).
REJECT_DOWNSTREAM = Verdict(
    Action.REJECT, 550, "5.0.0", "Error: refused by the next hop", "downstream_rejected"
)
TEMPFAIL_DOWNSTREAM = Verdict(
    Action.TEMPFAIL,
    451,
    "4.0.0",
    "Error: next hop deferred, try again later",
    "downstream_tempfail",
)
# The client closed the connection with a transaction open: nothing was told or queued.
TEMPFAIL_CLIENT_GONE = Verdict(
    Action.TEMPFAIL, 421, "4.4.2", "Error: lost connection", "client_gone"
)
# RFC 1870 §3: size-value ::= 1*20DIGIT; Postfix: "501 5.5.4 Bad message size syntax".
REJECT_BAD_SIZE = Verdict(Action.REJECT, 501, "5.5.4", "Error: bad message size syntax", "bad_size")

CATALOGUE: tuple[Verdict, ...] = (
    ACCEPT,
    REJECT_BARE_LF,
    REJECT_BARE_CR,
    REJECT_SMUGGLING,
    REJECT_PIPELINING,
    REJECT_TOO_LARGE,
    REJECT_VIRUS,
    TEMPFAIL_VIRUS,
    DISCARD_VIRUS,
    ACCEPT_VIRUS,
    TEMPFAIL_SCANNER_UNAVAILABLE,
    ACCEPT_SCANNER_FAIL_OPEN,
    TEMPFAIL_TOO_LARGE_TO_SCAN,
    TEMPFAIL_INSUFFICIENT_RESOURCES,
    ACCEPT_UNSCANNED,
    TEMPFAIL_INTERNAL,
    TEMPFAIL_DOWNSTREAM_UNREACHABLE,
    TEMPFAIL_TOO_MANY_CONNECTIONS,
    QUARANTINE_VIRUS,
    REJECT_SMUGGLING_TRACE,
    ACCEPT_BYPASS,
    REJECT_UNKNOWN_COMMAND,
    REJECT_NOT_IMPLEMENTED,
    REJECT_SYNTAX,
    REJECT_LINE_TOO_LONG,
    REJECT_BAD_SEQUENCE,
    REJECT_NO_RECIPIENTS,
    TEMPFAIL_TIMEOUT,
    TEMPFAIL_TOO_MANY_ERRORS,
    TEMPFAIL_SHUTTING_DOWN,
    TEMPFAIL_DOWNSTREAM_FAILED,
    # proxy endpoint (issue 9)
    REJECT_DOWNSTREAM,
    TEMPFAIL_DOWNSTREAM,
    TEMPFAIL_CLIENT_GONE,
    REJECT_BAD_SIZE,
)
