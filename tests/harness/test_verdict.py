"""Table tests for the decision: observed replies in, verdict out (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from filterd.harness.catalogue import BY_ID
from filterd.harness.reply import Reply
from filterd.harness.verdict import Decision, Observation, Verdict, decide, with_sink


def r(code: int, text: str = "ok") -> Reply:
    return Reply(code, (text,), 0.0)


OK, QUEUED, GO = r(250), r(250, "2.0.0 Ok: queued"), r(354, "End data with <CR><LF>.<CR><LF>")
SYNC = r(554, "5.5.0 Error: SMTP protocol synchronization")
# OpenSMTPD, when input waits after the line it has just read (smtp_session.c).
NO_PIPELINING = r(500, "5.5.1 Invalid command: Pipelining not supported")
EXIM_SYNC = r(554, "SMTP synchronization error")
BARE_LF = r(550, "5.5.2 mx Error: bare <LF> received")
BAD_SYNTAX = r(500, "5.5.2 Error: bad syntax")


@dataclass(frozen=True)
class Case:
    probe: str
    during: tuple[Reply, ...]
    after: tuple[Reply, ...]
    want: Verdict
    closed: bool = False
    note: str = ""
    accepted: int | None = None


CASES = {
    # Phase 1: no reply inside the window, one at the closer.
    "content: one 250 at the closer": Case(
        "E02", (), (QUEUED,), Verdict.TREATED_AS_CONTENT, accepted=1
    ),
    "content: delayed reject at the closer": Case(
        "E02", (), (BARE_LF,), Verdict.REJECTED, accepted=0
    ),
    "nothing at all, connection closed": Case("E02", (), (), Verdict.REJECTED, closed=True),
    "nothing at all, still open": Case("E02", (), (), Verdict.ERROR),
    # Phase 2: the sequence ended DATA.
    "split, smuggled transaction accepted": Case(
        "E02", (QUEUED, OK, OK, GO), (QUEUED,), Verdict.EXPLOITABLE, accepted=2
    ),
    "split, empty-line noise before the smuggled MAIL": Case(
        "E01", (QUEUED, BAD_SYNTAX, OK, OK, GO), (QUEUED,), Verdict.EXPLOITABLE, accepted=2
    ),
    "split, stopped by Postfix's pipelining check": Case(
        "E02", (QUEUED, OK, OK, SYNC), (), Verdict.EOD_ACCEPTED, closed=True, accepted=1
    ),
    "split, smuggled MAIL refused": Case(
        "E02", (QUEUED, r(550, "sender refused")), (), Verdict.EOD_ACCEPTED
    ),
    "split, smuggled message refused at its end": Case(
        "E02", (QUEUED, OK, OK, GO), (r(550, "no"),), Verdict.EOD_ACCEPTED, accepted=1
    ),
    "split late: every reply after the window": Case(
        "E02", (), (QUEUED, OK, OK, GO, QUEUED), Verdict.EXPLOITABLE
    ),
    "refused at the sequence, smuggled accepted anyway": Case(
        "E02", (BARE_LF, OK, OK, GO), (QUEUED,), Verdict.EXPLOITABLE, accepted=1
    ),
    "refused at the sequence, then closed": Case(
        "E02", (r(521, "bare LF"),), (), Verdict.REJECTED, closed=True
    ),
    "hygiene sequence split and accepted": Case(
        "E11", (QUEUED, OK, OK, GO), (QUEUED,), Verdict.HYGIENE
    ),
    "BDAT smuggled transaction accepted": Case(
        "P02", (QUEUED, OK, OK, QUEUED), (), Verdict.EXPLOITABLE, accepted=2
    ),
    "BDAT stopped": Case("P02", (QUEUED, OK, OK, r(503, "no")), (), Verdict.EOD_ACCEPTED),
    # A sync error as the first reply: the server was back in command mode, so the sequence
    # ended DATA, and its pipelining check refused the bytes after it (OpenSMTPD).
    "OpenSMTPD: pipelining not supported, then dropped": Case(
        "E02", (NO_PIPELINING,), (), Verdict.EOD_ACCEPTED, closed=True, accepted=0
    ),
    "OpenSMTPD, LF-only carrier": Case(
        "E01-L", (NO_PIPELINING,), (), Verdict.EOD_ACCEPTED, closed=True
    ),
    "Exim-style sync error first": Case("E01", (EXIM_SYNC,), (), Verdict.EOD_ACCEPTED),
    "sync error only at the closer": Case(
        "E02", (), (NO_PIPELINING,), Verdict.EOD_ACCEPTED, closed=True
    ),
    "a 500 without a sync text is a refusal": Case(
        "E02", (BAD_SYNTAX,), (), Verdict.REJECTED, closed=True
    ),
    "a 554 content refusal is a refusal": Case(
        "E02", (), (r(554, "5.7.1 message refused"),), Verdict.REJECTED
    ),
    "hygiene sequence, pipelining not supported": Case(
        "E03", (NO_PIPELINING,), (), Verdict.EOD_ACCEPTED, closed=True
    ),
    # Split write: the replies to each delayed part arrive inside the window.
    "split write: each smuggled command executed": Case(
        "E02-S", (QUEUED, OK, OK, GO), (QUEUED,), Verdict.EXPLOITABLE, accepted=2
    ),
    "split write: content only": Case("E02-S", (), (QUEUED,), Verdict.TREATED_AS_CONTENT),
    "Exim LF-only carrier: BDAT smuggled accepted": Case(
        "E01-LB", (QUEUED, BAD_SYNTAX, OK, OK, QUEUED), (), Verdict.EXPLOITABLE, accepted=2
    ),
    "Exim LF-only carrier: smuggled DATA refused with a sync error": Case(
        "E01-L", (QUEUED, BAD_SYNTAX, OK, OK, EXIM_SYNC), (), Verdict.EOD_ACCEPTED, accepted=1
    ),
    # Controls.
    "C01 ends DATA": Case("C01", (QUEUED,), (), Verdict.PASS),
    "C01 refused": Case("C01", (r(554, "no"),), (), Verdict.FAIL),
    "C01 silent": Case("C01", (), (), Verdict.FAIL),
    "C02 stays content": Case("C02", (), (QUEUED,), Verdict.PASS),
    "C02 ended DATA": Case("C02", (QUEUED,), (), Verdict.FAIL),
    # Real terminator with stray bytes before it.
    "stray CR accepted": Case("E13", (QUEUED,), (), Verdict.TREATED_AS_CONTENT),
    "stray NUL refused": Case("E18", (r(550, "NUL"),), (), Verdict.REJECTED),
    # Protocol probes.
    "P01 pipelined transaction accepted": Case("P01", (OK, OK, GO), (QUEUED,), Verdict.LENIENT),
    "P01 stopped at DATA": Case("P01", (OK, OK, SYNC), (), Verdict.BLOCKED_BY_SYNC, closed=True),
    "P03 stopped at the second DATA": Case(
        "P03", (QUEUED, OK, OK, SYNC), (), Verdict.BLOCKED_BY_SYNC
    ),
    "P03 first message refused": Case("P03", (r(550, "content"),), (), Verdict.REJECTED),
    "P04 answered after an early EHLO": Case("P04", (r(220, "mx"), OK), (), Verdict.LENIENT),
    "P04 dropped after an early EHLO": Case(
        "P04", (r(220, "mx"),), (), Verdict.BLOCKED_BY_SYNC, closed=True
    ),
    "P05 sync error at EHLO": Case("P05", (SYNC,), (), Verdict.BLOCKED_BY_SYNC),
    "P06 MAIL refused for policy": Case("P06", (r(550, "5.7.1 sender"),), (), Verdict.REJECTED),
    "P06 Exim-style sync": Case("P06", (EXIM_SYNC,), (), Verdict.BLOCKED_BY_SYNC),
    "P07 bare LF accepted": Case("P07", (OK,), (), Verdict.LENIENT),
    "P07 bare LF refused": Case("P07", (BARE_LF,), (), Verdict.REJECTED),
    "P07 dropped": Case("P07", (), (), Verdict.REJECTED, closed=True),
    "E21 NUL command accepted": Case("E21", (QUEUED, r(221, "bye")), (), Verdict.LENIENT),
    "E21 NUL command refused": Case("E21", (QUEUED, BAD_SYNTAX), (), Verdict.REJECTED),
    "P08 injected command discarded": Case("P08", (r(220, "go ahead"),), (), Verdict.DISCARDED),
    "P08 injected command answered in TLS": Case(
        "P08", (r(220, "go ahead"),), (OK,), Verdict.LENIENT
    ),
    "P08 STARTTLS refused": Case("P08", (r(454, "no TLS"),), (), Verdict.REJECTED),
    "P08 handshake failed": Case(
        "P08",
        (r(220, "go ahead"),),
        (),
        Verdict.REJECTED,
        closed=True,
        note="TLS handshake failed: wrong version number",
    ),
}


@pytest.mark.parametrize(
    "case", CASES.values(), ids=[f"{case.probe} {name}" for name, case in CASES.items()]
)
def test_decide(case: Case) -> None:
    obs = Observation(case.during, case.after, case.closed, case.note)
    got = decide(BY_ID[case.probe], obs)
    assert got.verdict is case.want, (
        f"got {got.verdict.value} ({got.reason}), want {case.want.value}"
    )
    if case.accepted is not None:
        assert got.accepted == case.accepted, f"accepted: got {got.accepted}, want {case.accepted}"


@pytest.mark.parametrize(
    ("probe", "before", "smuggled", "want"),
    [
        ("E02", Verdict.TREATED_AS_CONTENT, 1, Verdict.EXPLOITABLE),
        ("E02", Verdict.TREATED_AS_CONTENT, 0, Verdict.TREATED_AS_CONTENT),
        ("E02", Verdict.EOD_ACCEPTED, 1, Verdict.EXPLOITABLE),
        ("E02-S", Verdict.TREATED_AS_CONTENT, 1, Verdict.EXPLOITABLE),
        ("E11", Verdict.HYGIENE, 1, Verdict.HYGIENE),
        ("E02", Verdict.EXPLOITABLE, 0, Verdict.EXPLOITABLE),
        # Controls and protocol probes hide no message: an arrival never upgrades them.
        ("P01", Verdict.LENIENT, 1, Verdict.LENIENT),
        ("P03", Verdict.LENIENT, 1, Verdict.LENIENT),
        ("C01", Verdict.PASS, 1, Verdict.PASS),
        ("C02", Verdict.PASS, 1, Verdict.PASS),
    ],
    ids=lambda v: getattr(v, "value", str(v)),
)
def test_sink_arrivals(probe: str, before: Verdict, smuggled: int, want: Verdict) -> None:
    got = with_sink(BY_ID[probe], Decision(before, "target said so", 1), smuggled)
    assert got.verdict is want, f"got {got.verdict.value}, want {want.value}"
    assert got.accepted == 1


def test_reasons_quote_the_replies() -> None:
    obs = Observation((QUEUED, OK, OK, SYNC), (), True)
    got = decide(BY_ID["E02"], obs)
    assert "554 5.5.0 Error: SMTP protocol synchronization" in got.reason
