"""Command synchronisation rules (RFC 2920, RFC 5321) as one pure check.

The SMTP endpoint calls `check()` after reading each command (and before the greeting, and
after the end-of-data dot) with `waiting=True` when more bytes were already received.
A violation is answered with REJECT_PIPELINING (554 5.5.0) and a disconnect, as Postfix's
smtpd_forbid_unauth_pipelining does. Whether bytes are waiting depends on network timing;
like Postfix and Exim, the check can only see what has arrived.

filterd never offers PIPELINING in its EHLO reply, so the client must wait for every reply:
RFC 2920 §3.1 lets a client pipeline only once the server has offered it. Which commands may
share a group once it is offered (RSET, MAIL, RCPT anywhere; EHLO, DATA, QUIT... last) would
matter only if filterd offered it; until then any byte sent ahead of a reply is a violation.
"""

from __future__ import annotations

from dataclasses import dataclass

CONNECT = "CONNECT"  # before the 220 greeting; Postfix logs "after CONNECT"
END_OF_DATA = "END-OF-DATA"  # after the <CRLF>.<CRLF> that ends the content

# The authority logged with each violation.
BEFORE_GREETING = "RFC 5321 §3.1 (input before the greeting)"
NOT_OFFERED = "RFC 2920 §3.1 (PIPELINING not offered)"


@dataclass(frozen=True, slots=True)
class Violation:
    after: str  # CONNECT, END-OF-DATA or a command verb
    rule: str  # the authority, for the log line


def check(after: str, *, waiting: bool) -> Violation | None:
    """Did the client break synchronisation by sending bytes before our reply to `after`?"""
    if not waiting:
        return None
    verb = after.upper()
    if verb == CONNECT:
        # RFC 5321 §3.1: the client waits for the server's greeting before it speaks.
        return Violation(CONNECT, BEFORE_GREETING)
    # RFC 2920 §3.1: pipelining only after the server offered it; filterd never does.
    return Violation(verb, NOT_OFFERED)
