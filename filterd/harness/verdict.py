"""Verdicts: a pure function of the replies a probe observed.

Phase 1 asks whether the probe's sequence ended DATA: any reply that arrives before the harness
sends the real terminator (the closer) says it did, and so does more than one reply overall,
because content that stays content earns exactly one reply, at the real terminator.
Phase 2 asks whether the smuggled transaction was accepted: every reply after the first must
match the probe's expected steps (smuggled MAIL 2xx, RCPT 2xx, DATA 354, end of data 250), which
is Exim's oracle of two accepted messages where one was sent (Exim's test 0900). A
synchronisation error as the first reply also means the sequence ended DATA: the server was
back in command mode and refused the bytes that followed (OpenSMTPD's "500 Pipelining not
supported" then a disconnect). With a sink, a smuggled message that arrived there is proof on
its own for the probes that send one (`with_sink`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from filterd.harness.catalogue import Kind, Probe, Rule, Step
from filterd.harness.reply import Reply


class Verdict(enum.Enum):
    # The fake sequence ended DATA and the smuggled transaction was accepted.
    EXPLOITABLE = "EXPLOITABLE"
    # Same as EXPLOITABLE for a hygiene probe: a compliant relay dot-stuffs this sequence, so
    # it only works on a direct connection, where a client needs no smuggling anyway.
    HYGIENE = "HYGIENE"
    # The fake sequence ended DATA, but the smuggled transaction was stopped.
    EOD_ACCEPTED = "EOD-ACCEPTED"
    # The sequence stayed in the message; the real terminator got a 2xx.
    TREATED_AS_CONTENT = "TREATED-AS-CONTENT"
    # The server refused the input (4xx/5xx or closed) for a reason other than synchronisation.
    REJECTED = "REJECTED"
    # The server refused unsynchronised input (RFC 2920 rules) or dropped the connection.
    BLOCKED_BY_SYNC = "BLOCKED-BY-SYNC"
    # The server went along with protocol input a strict server refuses (a weakness).
    LENIENT = "LENIENT"
    # STARTTLS: plaintext sent before the handshake was thrown away.
    DISCARDED = "DISCARDED"
    PASS = "PASS"  # noqa: S105 (a verdict name, not a password)
    FAIL = "FAIL"
    NOT_APPLICABLE = "NOT-APPLICABLE"
    # The probe could not run (setup refused, no reply at all, connection failed).
    ERROR = "ERROR"


@dataclass(frozen=True)
class Observation:
    during: tuple[Reply, ...]  # replies before the closer was sent (phase-1 window)
    after: tuple[Reply, ...]  # replies after the closer
    closed: bool  # the server closed the connection
    note: str = ""  # what the runner saw besides replies (e.g. a failed TLS handshake)

    @property
    def replies(self) -> tuple[Reply, ...]:
        return self.during + self.after


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    accepted: int = 0  # messages the target took (2xx at an end of data or BDAT LAST)


def _mismatch(expect: tuple[Step, ...], replies: tuple[Reply, ...]) -> int | None:
    """Index of the first expected step that did not get its reply class, else None."""
    for index, step in enumerate(expect):
        if index >= len(replies) or replies[index].reply_class != step.reply_class:
            return index
    return None


def _at(index: int, expect: tuple[Step, ...], obs: Observation) -> str:
    """What happened at one expected step, for a reason text."""
    label = expect[index].label
    if index < len(obs.replies):
        return f"{label}: {obs.replies[index].show()}"
    return f"{label}: {'connection closed' if obs.closed else 'no reply'}"


def _accepted(expect: tuple[Step, ...], replies: tuple[Reply, ...]) -> int:
    return sum(
        1
        for step, reply in zip(expect, replies, strict=False)
        if step.ends_message and reply.reply_class == 2
    )


def _says_sync(reply: Reply) -> bool:
    """The reply's text names a synchronisation or pipelining error: Postfix "554 5.5.0 Error:
    SMTP protocol synchronization" and "503 5.5.0 ... Improper use of SMTP command pipelining",
    Exim "554 SMTP synchronization error", OpenSMTPD "500 5.5.1 Invalid command: Pipelining
    not supported". A bare code is not enough: 554 and 500 also refuse content."""
    text = " ".join(reply.lines).lower()
    return reply.reply_class in (4, 5) and ("synchroni" in text or "pipelin" in text)


def _looks_like_sync(reply: Reply) -> bool:
    # For the protocol probes, whose only possible refusals are these codes.
    return _says_sync(reply) or reply.code in (421, 500, 503, 554)


def _no_reply(obs: Observation, what: str) -> Decision:
    if obs.closed:
        return Decision(Verdict.REJECTED, f"connection closed without a reply to {what}")
    return Decision(Verdict.ERROR, f"no reply to {what} before the deadline")


def _without_noise(replies: tuple[Reply, ...]) -> tuple[Reply, ...]:
    """Drop the errors that come before the smuggled MAIL: SEC's layout puts a CRLF after
    every sequence, so a sequence that already ended its line leaves an empty command line,
    which earns "500 5.5.2 Error: bad syntax" from Postfix."""
    index = 0
    while index < len(replies) and replies[index].reply_class in (4, 5):
        index += 1
    return replies[index:]


def _first_reply(first: Reply, obs: Observation) -> Decision | None:
    """The verdict when the first reply alone decides it, else None."""
    if _says_sync(first):
        # The server read a command line where DATA should have gone on: the sequence ended
        # DATA, and the server's pipelining check refused what came after it.
        return Decision(
            Verdict.EOD_ACCEPTED,
            f"sequence ended DATA: the server then refused the bytes after it as pipelined "
            f"input ({first.show()})",
        )
    if not obs.during and len(obs.replies) == 1:
        if first.reply_class == 2:
            return Decision(Verdict.TREATED_AS_CONTENT, f"ended only at the closer: {first.show()}")
        return Decision(Verdict.REJECTED, f"refused at the closer: {first.show()}")
    return None


def _smuggle(expect: tuple[Step, ...], obs: Observation) -> Decision:
    replies = obs.replies
    if not replies:
        return _no_reply(obs, "the real terminator")
    first = replies[0]
    decided = _first_reply(first, obs)
    if decided is not None:
        return decided
    late = "" if obs.during else " (replied after the window)"
    rest = _without_noise(replies[1:])
    if _mismatch(expect[1:], rest) is None:
        accepted = 1 + _accepted(expect[1:], rest) if first.reply_class == 2 else 0
        return Decision(
            Verdict.EXPLOITABLE,
            f"sequence ended DATA{late} ({first.show()}); smuggled transaction accepted; "
            f"{accepted} end-of-data 2xx for one message sent",
        )
    then = "; ".join(reply.show() for reply in replies[1:]) or (
        "connection closed" if obs.closed else "no reply"
    )
    if first.reply_class == 2:
        return Decision(
            Verdict.EOD_ACCEPTED,
            f"sequence ended DATA{late} ({first.show()}); smuggled transaction stopped: {then}",
        )
    return Decision(
        Verdict.REJECTED,
        f"refused before the closer{late} ({first.show()}); smuggled transaction stopped: {then}",
    )


def _ends_data(expect: tuple[Step, ...], obs: Observation) -> Decision:
    if obs.during and obs.during[0].reply_class == 2:
        return Decision(Verdict.PASS, f"ended DATA: {obs.during[0].show()}")
    return Decision(Verdict.FAIL, f"did not end DATA: {_at(0, expect, obs)}")


def _stays_content(expect: tuple[Step, ...], obs: Observation) -> Decision:
    if not obs.during and len(obs.after) == 1 and obs.after[0].reply_class == 2:
        return Decision(Verdict.PASS, f"stayed content; closer got {obs.after[0].show()}")
    if obs.during:
        return Decision(Verdict.FAIL, f"ended DATA early: {obs.during[0].show()}")
    return Decision(Verdict.FAIL, f"closer not accepted: {_at(0, expect, obs)}")


def _stray(expect: tuple[Step, ...], obs: Observation) -> Decision:
    if not obs.replies:
        return _no_reply(obs, "the end of data")
    first = obs.replies[0]
    if first.reply_class == 2:
        return Decision(Verdict.TREATED_AS_CONTENT, f"stray bytes accepted: {first.show()}")
    return Decision(Verdict.REJECTED, f"refused: {first.show()}")


def _sync(expect: tuple[Step, ...], obs: Observation) -> Decision:
    index = _mismatch(expect, obs.replies)
    if index is None:
        return Decision(Verdict.LENIENT, f"every unsynchronised step accepted ({len(expect)})")
    where = _at(index, expect, obs)
    if index >= len(obs.replies):
        verdict = Verdict.BLOCKED_BY_SYNC if obs.closed else Verdict.ERROR
        return Decision(verdict, f"stopped at {where}")
    if _looks_like_sync(obs.replies[index]):
        return Decision(Verdict.BLOCKED_BY_SYNC, f"stopped at {where}")
    return Decision(Verdict.REJECTED, f"refused at {where}")


def _command(expect: tuple[Step, ...], obs: Observation) -> Decision:
    index = _mismatch(expect, obs.replies)
    if index is None:
        return Decision(
            Verdict.LENIENT, f"malformed input accepted ({_at(len(expect) - 1, expect, obs)})"
        )
    where = _at(index, expect, obs)
    if index >= len(obs.replies) and not obs.closed:
        return Decision(Verdict.ERROR, f"stopped at {where}")
    return Decision(Verdict.REJECTED, f"refused at {where}")


def _starttls(expect: tuple[Step, ...], obs: Observation) -> Decision:
    if not obs.during or obs.during[0].reply_class != 2:
        return Decision(Verdict.REJECTED, f"STARTTLS refused: {_at(0, expect, obs)}")
    if obs.note:
        return Decision(Verdict.REJECTED, obs.note)
    if obs.after:
        return Decision(
            Verdict.LENIENT, f"injected command answered inside TLS: {obs.after[0].show()}"
        )
    return Decision(Verdict.DISCARDED, "no reply to the injected command inside TLS")


RULES: dict[Rule, Callable[[tuple[Step, ...], Observation], Decision]] = {
    Rule.SMUGGLE: _smuggle,
    Rule.ENDS_DATA: _ends_data,
    Rule.STAYS_CONTENT: _stays_content,
    Rule.STRAY: _stray,
    Rule.SYNC: _sync,
    Rule.COMMAND: _command,
    Rule.STARTTLS: _starttls,
}


def decide(probe: Probe, obs: Observation) -> Decision:
    decision = RULES[probe.rule](probe.expect, obs)
    replies = obs.replies
    if probe.rule is Rule.SMUGGLE and replies:
        replies = replies[:1] + _without_noise(replies[1:])
    decision = replace(decision, accepted=_accepted(probe.expect, replies))
    if decision.verdict is Verdict.EXPLOITABLE and probe.kind is Kind.HYGIENE:
        # A compliant relay dot-stuffs the sequence (RFC 5321 §4.5.2): RFC hygiene only.
        return replace(decision, verdict=Verdict.HYGIENE)
    return decision


def with_sink(probe: Probe, decision: Decision, smuggled_arrived: int) -> Decision:
    """A smuggled message that reached the sink is the complete proof, for a probe that hides
    one behind a fake sequence. Controls and protocol probes hide nothing: what they send
    arriving at the sink is ordinary delivery, and never upgrades their verdict."""
    if probe.rule is not Rule.SMUGGLE:
        return decision
    # When the target's own replies already showed the split, the arrival is explained by it;
    # otherwise the target passed the sequence on and a later hop split it.
    if smuggled_arrived and decision.verdict not in (Verdict.EXPLOITABLE, Verdict.HYGIENE):
        return Decision(
            Verdict.EXPLOITABLE,
            f"sink received {smuggled_arrived} smuggled message(s); target said: {decision.reason}",
            decision.accepted,
        )
    return decision
