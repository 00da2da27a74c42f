"""The SMTP server's sequencing: which command may come when, as a table.

Rules this module obeys (the shape of h11's `_state.py`):
1. Everything that decides whether a command may run now lives here: the order of commands
   (RFC 5321 §4.1.4), the argument checks that refuse a command before it runs, and the
   synchronisation rule (RFC 2920 §3.1, through filterd.core.pipelining). As much as
   possible is in the tables `COMMANDS` and `TRANSITIONS`; what does not fit (a line too
   long, a bad line end, input sent ahead) is the short code of `Machine.receive`.
2. It knows nothing of I/O, time, the downstream, the content or the log: lines and the
   session's reports go in, `Step`s come out. Whether MAIL and RCPT succeed is decided by
   the reinjection smtpd, so the machine moves on only when the session reports it
   (`accepted`), and a transaction ends when the session says so (`ended`).
3. It does not render replies (replies.py does) and it never raises on client input: every
   bad line is a `Refuse` or a `Disconnect` carrying the verdict to render.

States follow a proxy session from the TCP connection to QUIT; `COMMANDS[state][verb]` is
either the verdict refusing the verb in that state or an `Allow` naming the event that its
success fires; `TRANSITIONS[state][event]` is the next state. A verb absent from a state's
row is not offered there. The state diagram in docs/reference/smtp-states.md is generated
from these two tables (tests/core/test_smtp_machine.py keeps it in step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from filterd.core import pipelining
from filterd.core import verdict as v
from filterd.core.errors import CoreError
from filterd.core.policy import BareNewline, Policy
from filterd.core.smtp import commands
from filterd.core.smtp.commands import Command


class State(StrEnum):
    START = "start"  # connected; our 220 is not sent yet
    CONNECTED = "connected"  # 220 sent; no HELO/EHLO yet
    GREETED = "greeted"  # the client's HELO/EHLO got 250; no mail transaction
    MAIL = "mail"  # the downstream accepted MAIL: a transaction is open (RFC 5321 §3.3)
    RCPT = "rcpt"  # ... and at least one RCPT
    DATA = "data"  # 354 sent: the content, until the reply after the final dot
    CLOSED = "closed"  # QUIT answered 221


class Event(StrEnum):
    """What the session reports; the labels are the diagram's."""

    GREETING = "220 sent"
    HELLO = "HELO/EHLO 250"
    MAIL = "MAIL 2XX"
    RCPT = "RCPT 2XX"
    DATA = "354 sent"
    END = "transaction ended"  # reply after the dot, RSET, a new EHLO, a refusal, a failure
    QUIT = "221 sent"


@dataclass(frozen=True, slots=True)
class Allow:
    """The verb may run in this state; `then` is the event its success fires (None: none)."""

    then: Event | None


ANY_TIME = {
    # RFC 5321 §4.1.4: EHLO/HELO may be issued later in the session; the server then resets
    # the state "exactly as if a RSET command had been issued" (RFC 5321 §4.1.1.1).
    "EHLO": Allow(Event.HELLO),
    "HELO": Allow(Event.HELLO),
    # RFC 5321 §4.1.1.5 and §4.1.4: RSET may be issued at any time; it ends the transaction.
    "RSET": Allow(Event.END),
    # RFC 5321 §4.1.1.9: NOOP has no effect on any state.
    "NOOP": Allow(None),
    # RFC 5321 §4.1.1.10: QUIT at any time; the server closes after its 221.
    "QUIT": Allow(Event.QUIT),
}
# RFC 5321 §4.1.4: "MAIL ... if a mail transaction is already open, 503" and RCPT/DATA
# only within a transaction; §4.1.1.4: DATA without an accepted recipient gets 503 or 554
# ("no valid recipients"). Postfix XFORWARD_README: XFORWARD may be sent "at any time
# except in the middle of a mail delivery transaction (i.e. between MAIL and DOT)"; filterd
# also wants the EHLO that offered it first.
COMMANDS: dict[State, dict[str, Allow | v.Verdict]] = {
    State.CONNECTED: {
        **ANY_TIME,
        "XFORWARD": v.REJECT_BAD_SEQUENCE,
        "MAIL": v.REJECT_BAD_SEQUENCE,  # RFC 5321 §4.1.4: HELO/EHLO first
        "RCPT": v.REJECT_BAD_SEQUENCE,
        "DATA": v.REJECT_BAD_SEQUENCE,
    },
    State.GREETED: {
        **ANY_TIME,
        "XFORWARD": Allow(None),
        "MAIL": Allow(Event.MAIL),
        "RCPT": v.REJECT_BAD_SEQUENCE,  # RFC 5321 §4.1.1.3: RCPT needs MAIL
        "DATA": v.REJECT_BAD_SEQUENCE,
    },
    State.MAIL: {
        **ANY_TIME,
        "XFORWARD": v.REJECT_BAD_SEQUENCE,
        "MAIL": v.REJECT_BAD_SEQUENCE,  # RFC 5321 §4.1.1.2: one transaction at a time
        "RCPT": Allow(Event.RCPT),
        "DATA": v.REJECT_NO_RECIPIENTS,  # RFC 5321 §4.1.1.4
    },
    State.RCPT: {
        **ANY_TIME,
        "XFORWARD": v.REJECT_BAD_SEQUENCE,
        "MAIL": v.REJECT_BAD_SEQUENCE,
        "RCPT": Allow(Event.RCPT),
        "DATA": Allow(Event.DATA),
    },
    # No command line is read in DATA (the content is) nor after QUIT.
    State.START: {},
    State.DATA: {},
    State.CLOSED: {},
}
TRANSITIONS: dict[State, dict[Event, State]] = {
    # RFC 5321 §3.1: the server speaks first; the session opens with its 220.
    State.START: {Event.GREETING: State.CONNECTED, Event.END: State.START},
    State.CONNECTED: {
        Event.HELLO: State.GREETED,
        Event.END: State.CONNECTED,
        Event.QUIT: State.CLOSED,
    },
    State.GREETED: {
        Event.HELLO: State.GREETED,
        Event.MAIL: State.MAIL,
        Event.END: State.GREETED,
        Event.QUIT: State.CLOSED,
    },
    State.MAIL: {
        Event.HELLO: State.GREETED,
        Event.RCPT: State.RCPT,
        Event.END: State.GREETED,
        Event.QUIT: State.CLOSED,
    },
    State.RCPT: {
        Event.HELLO: State.GREETED,
        Event.RCPT: State.RCPT,
        Event.DATA: State.DATA,
        Event.END: State.GREETED,
        Event.QUIT: State.CLOSED,
    },
    # RFC 5321 §4.1.1.4: the reply after the final dot ends the transaction.
    State.DATA: {Event.END: State.GREETED},
    State.CLOSED: {Event.END: State.CLOSED},
}
# Every state has an END row: the session ends whatever is open however it stops.
# Recognised but deliberately not offered (replies.ehlo says why): 502 5.5.1, not 5.5.2.
NOT_OFFERED = frozenset({"STARTTLS", "AUTH", "BDAT", "VRFY", "EXPN", "TURN", "ETRN", "HELP"})


@dataclass(frozen=True, slots=True)
class Note:
    """Something the session logs (an event name and its fields); never message bytes."""

    what: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Go:
    """Run the command. `address`: the MAIL/RCPT path; `attributes`: XFORWARD's, decoded."""

    command: Command
    then: Event | None
    address: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()
    size: int = 0  # MAIL's declared SIZE= (RFC 1870 §3); 0 when it declares none

    @property
    def verb(self) -> str:
        return self.command.verb


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer `verdict` and read on. `counted`: toward Postfix's smtpd_hard_error_limit."""

    verdict: v.Verdict
    counted: bool = True
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Answer `verdict`, log `notes`, close the session."""

    verdict: v.Verdict
    notes: tuple[Note, ...] = ()


Step = Go | Refuse | Disconnect


class Machine:
    """One SMTP server session's sequencing. `xforward`: the client may send XFORWARD."""

    def __init__(self, policy: Policy, *, xforward: bool) -> None:
        self.policy = policy
        self.xforward = xforward
        self.state = State.START

    @property
    def greeted(self) -> bool:
        """The client has said HELO or EHLO (RSET does not undo it)."""
        return self.state not in (State.START, State.CONNECTED)

    # --- what the session feeds in ---------------------------------------------------------

    def open(self, *, waiting: bool) -> Disconnect | None:
        """May the 220 be sent? RFC 5321 §3.1: the client waits for the greeting."""
        stop = self.sync(pipelining.CONNECT, waiting=waiting)
        if stop is None:
            self.fire(Event.GREETING)
        return stop

    def receive(self, raw: bytes | None, *, waiting: bool) -> Step:
        """One command line as read (line end included; None: it was too long and skipped).

        `waiting`: more input had arrived behind this line.
        """
        if raw is None:
            return Refuse(v.REJECT_LINE_TOO_LONG)  # RFC 5321 §4.5.3.1.4
        command = commands.parse(raw)
        if isinstance(command, v.Verdict):
            return Refuse(command)
        notes: tuple[Note, ...] = ()
        mode = self.policy.forbid_bare_newline
        code = self.policy.bare_newline_reject_code
        if command.bare_lf and mode in (BareNewline.REJECT, BareNewline.NOTE):
            notes = (Note("bare_lf_command", {"verb": command.verb}),)
        forced = commands.line_end_verdict(command, mode, code)
        if forced is not None:
            # Postfix smtpd_forbid_bare_newline=reject: reply, then disconnect.
            return Disconnect(forced, notes)
        stop = self.sync(command.verb, waiting=waiting)
        if stop is not None:
            return Disconnect(stop.verdict, notes + stop.notes)
        return self.decide(command, notes)

    def sync(self, after: str, *, waiting: bool) -> Disconnect | None:
        """RFC 2920 §3.1: 554 5.5.0 and disconnect when the client did not wait for us.

        `after`: CONNECT, END-OF-DATA or a verb (filterd.core.pipelining has the table).
        """
        # replies.ehlo never offers PIPELINING: every byte sent ahead of a reply is a violation.
        violation = pipelining.check(after, waiting=waiting)
        if violation is None:
            return None
        note = Note("pipelining", {"after": violation.after, "rule": violation.rule})
        return Disconnect(v.REJECT_PIPELINING, (note,))

    # --- what the session reports ----------------------------------------------------------

    def accepted(self, go: Go) -> None:
        """The command of `go` succeeded (our 250 or 221, or the downstream's 2XX)."""
        if go.then is not None:
            self.fire(go.then)

    def data_started(self) -> None:
        """The 354 is sent; the content follows."""
        self.fire(Event.DATA)

    def ended(self) -> None:
        """The transaction, if any, is over (reply after the dot, RSET, refusal, failure)."""
        self.fire(Event.END)

    def fire(self, event: Event) -> None:
        """Move on by `TRANSITIONS`; an event the state does not expect is a session bug."""
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            msg = f"event {event.name} in state {self.state.name}"
            raise SequenceError(msg) from None

    # --- the table, read ------------------------------------------------------------------

    def decide(self, command: Command, notes: tuple[Note, ...] = ()) -> Step:
        """The table's answer for `command` in the current state, then its argument."""
        rule = self.rule(command.verb)
        if isinstance(rule, v.Verdict):
            return Refuse(rule, notes=notes)
        return self.check_argument(Go(command, rule.then, notes=notes))

    def rule(self, verb: str) -> Allow | v.Verdict:
        row = COMMANDS[self.state]
        if verb == "XFORWARD" and not self.xforward:
            # Postfix XFORWARD_README: only for authorized clients; to the others it is a
            # command not offered.
            return v.REJECT_NOT_IMPLEMENTED
        if verb in row:
            return row[verb]
        known = verb in NOT_OFFERED or any(verb in other for other in COMMANDS.values())
        return v.REJECT_NOT_IMPLEMENTED if known else v.REJECT_UNKNOWN_COMMAND

    def check_argument(self, go: Go) -> Step:
        check = ARGUMENTS.get(go.verb)
        return go if check is None else check(go, self.policy)


# --- the argument each verb must (or must not) have: RFC 5321 §4.1.1.x -----------------------


def _refuse(go: Go, verdict: v.Verdict, *, counted: bool = True) -> Refuse:
    return Refuse(verdict, counted=counted, notes=go.notes)


def _hello(go: Go, policy: Policy) -> Step:
    # RFC 5321 §4.1.1.1: EHLO and HELO name the client's domain or address literal.
    return _refuse(go, v.REJECT_SYNTAX) if not go.command.argument else go


def _xforward(go: Go, policy: Policy) -> Step:
    # Postfix XFORWARD_README: NAME=value pairs of the attributes the EHLO reply names.
    attributes = commands.xforward(go.command.argument)
    if attributes is None:
        return _refuse(go, v.REJECT_SYNTAX)
    return dataclasses.replace(go, attributes=attributes)


def _mail(go: Go, policy: Policy) -> Step:
    path = commands.path(go.command.argument, "FROM")  # RFC 5321 §4.1.1.2
    if path is None:
        return _refuse(go, v.REJECT_SYNTAX)
    declared = commands.declared_size(path.parameters)
    if isinstance(declared, v.Verdict):
        return _refuse(go, declared)  # RFC 1870 §3: 501 5.5.4
    if declared is not None and declared > policy.max_message_size:
        # RFC 1870 §6.1: a declared size above the limit is refused at once (552 5.3.4);
        # not counted as a client error.
        return _refuse(go, v.REJECT_TOO_LARGE, counted=False)
    return dataclasses.replace(go, address=path.address, size=declared or 0)


def _rcpt(go: Go, policy: Policy) -> Step:
    path = commands.path(go.command.argument, "TO")  # RFC 5321 §4.1.1.3
    if path is None:
        return _refuse(go, v.REJECT_SYNTAX)
    return dataclasses.replace(go, address=path.address)


def _data(go: Go, policy: Policy) -> Step:
    # RFC 5321 §4.1.1.4: "DATA <CRLF>", no argument.
    return _refuse(go, v.REJECT_SYNTAX) if go.command.argument else go


# Verbs absent here (RSET, NOOP, QUIT) run whatever follows them, as today.
ARGUMENTS: dict[str, Callable[[Go, Policy], Step]] = {
    "EHLO": _hello,
    "HELO": _hello,
    "XFORWARD": _xforward,
    "MAIL": _mail,
    "RCPT": _rcpt,
    "DATA": _data,
}


class SequenceError(CoreError):
    """The session reported an event that its state does not allow: a bug in the session."""
