"""Command synchronisation rules (RFC 2920, RFC 5321) as a table, and one pure check.

The SMTP endpoint calls `check()` after reading each command (and before the greeting, and
after the end-of-data dot) with `waiting=True` when more bytes were already received.
A violation is answered with REJECT_PIPELINING (554 5.5.0) and a disconnect, as Postfix's
smtpd_forbid_unauth_pipelining does. Whether bytes are waiting depends on network timing;
like Postfix and Exim, the check can only see what has arrived.

RFC 2920 §3.1: "The EHLO, DATA, VRFY, EXPN, TURN, QUIT, and NOOP commands can only appear as
the last command in a group since their success or failure produces a change of state which
the client SMTP must accommodate." RSET, MAIL and RCPT may appear anywhere in a group, and the
message content may be the first "command" of a group. A client may pipeline only once the
server has offered PIPELINING in its EHLO reply. "Additional commands added by other SMTP
extensions may only appear as the last command in a group unless otherwise specified by the
extensions that define the commands": a verb not named below is last in its group.
"""

from __future__ import annotations

from dataclasses import dataclass

# Commands that may appear anywhere in a group, with the authority for each.
ANYWHERE_IN_GROUP: dict[str, str] = {
    "RSET": "RFC 2920 §3.1",
    "MAIL": "RFC 2920 §3.1",
    "SEND": "RFC 2920 §3.1",
    "SOML": "RFC 2920 §3.1",
    "SAML": "RFC 2920 §3.1",
    "RCPT": "RFC 2920 §3.1",
    "BDAT": "RFC 3030 §4 (chunks may be pipelined)",
}
# Where the client must stop and wait for the reply, with the authority for each.
LAST_IN_GROUP: dict[str, str] = {
    "EHLO": "RFC 2920 §3.1",
    "HELO": "Postfix smtpd.c (HELO is handled like EHLO)",
    "DATA": "RFC 2920 §3.1 (content before the 354 reply)",
    "VRFY": "RFC 2920 §3.1",
    "EXPN": "RFC 2920 §3.1",
    "TURN": "RFC 2920 §3.1",
    "QUIT": "RFC 2920 §3.1",
    "NOOP": "RFC 2920 §3.1",
    "STARTTLS": "RFC 3207 §4 (input before TLS must be discarded)",
}
OTHER_COMMANDS = "RFC 2920 §3.1 (commands of other extensions end a group)"

CONNECT = "CONNECT"  # before the 220 greeting; Postfix logs "after CONNECT"
END_OF_DATA = "END-OF-DATA"  # after the <CRLF>.<CRLF> that ends the content


@dataclass(frozen=True, slots=True)
class Violation:
    after: str  # CONNECT, END-OF-DATA or a command verb
    rule: str  # the authority, for the log line


def check(after: str, *, waiting: bool, pipelining_offered: bool) -> Violation | None:
    """Did the client break synchronisation by sending bytes before our reply to `after`?"""
    if not waiting:
        return None
    verb = after.upper()
    if verb == CONNECT:
        # RFC 5321 §3.1: the client waits for the server's greeting before it speaks.
        return Violation(CONNECT, "RFC 5321 §3.1 (input before the greeting)")
    if not pipelining_offered:
        # RFC 2920 §3.1: pipelining only after the server offered it (no EHLO, or not offered).
        return Violation(verb, "RFC 2920 §3.1 (PIPELINING not offered)")
    if verb == END_OF_DATA or verb in ANYWHERE_IN_GROUP:
        # RFC 2920 §3.1: the message content may be the first "command" of a group.
        return None
    return Violation(verb, LAST_IN_GROUP.get(verb, OTHER_COMMANDS))
