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
    name: str
    probe: str
    during: tuple[Reply, ...]
    after: tuple[Reply, ...]
    want: Verdict
    closed: bool = False
    note: str = ""
    accepted: int | None = None


CASES = [
    # Phase 1: no reply inside the window, one at the closer.
    Case(
        "content: one 250 at the closer",
        "E02",
        (),
        (QUEUED,),
        Verdict.TREATED_AS_CONTENT,
        accepted=1,
    ),
    Case(
        "content: delayed reject at the closer", "E02", (), (BARE_LF,), Verdict.REJECTED, accepted=0
    ),
    Case("nothing at all, connection closed", "E02", (), (), Verdict.REJECTED, closed=True),
    Case("nothing at all, still open", "E02", (), (), Verdict.ERROR),
    # Phase 2: the sequence ended DATA.
    Case(
        "split, smuggled transaction accepted",
        "E02",
        (QUEUED, OK, OK, GO),
        (QUEUED,),
        Verdict.EXPLOITABLE,
        accepted=2,
    ),
    Case(
        "split, empty-line noise before the smuggled MAIL",
        "E01",
        (QUEUED, BAD_SYNTAX, OK, OK, GO),
        (QUEUED,),
        Verdict.EXPLOITABLE,
        accepted=2,
    ),
    Case(
        "split, stopped by Postfix's pipelining check",
        "E02",
        (QUEUED, OK, OK, SYNC),
        (),
        Verdict.EOD_ACCEPTED,
        closed=True,
        accepted=1,
    ),
    Case(
        "split, smuggled MAIL refused",
        "E02",
        (QUEUED, r(550, "sender refused")),
        (),
        Verdict.EOD_ACCEPTED,
    ),
    Case(
        "split, smuggled message refused at its end",
        "E02",
        (QUEUED, OK, OK, GO),
        (r(550, "no"),),
        Verdict.EOD_ACCEPTED,
        accepted=1,
    ),
    Case(
        "split late: every reply after the window",
        "E02",
        (),
        (QUEUED, OK, OK, GO, QUEUED),
        Verdict.EXPLOITABLE,
    ),
    Case(
        "refused at the sequence, smuggled accepted anyway",
        "E02",
        (BARE_LF, OK, OK, GO),
        (QUEUED,),
        Verdict.EXPLOITABLE,
        accepted=1,
    ),
    Case(
        "refused at the sequence, then closed",
        "E02",
        (r(521, "bare LF"),),
        (),
        Verdict.REJECTED,
        closed=True,
    ),
    Case(
        "hygiene sequence split and accepted",
        "E11",
        (QUEUED, OK, OK, GO),
        (QUEUED,),
        Verdict.HYGIENE,
    ),
    Case(
        "BDAT smuggled transaction accepted",
        "P02",
        (QUEUED, OK, OK, QUEUED),
        (),
        Verdict.EXPLOITABLE,
        accepted=2,
    ),
    Case("BDAT stopped", "P02", (QUEUED, OK, OK, r(503, "no")), (), Verdict.EOD_ACCEPTED),
    # A sync error as the first reply: the server was back in command mode, so the sequence
    # ended DATA, and its pipelining check refused the bytes after it (OpenSMTPD).
    Case(
        "OpenSMTPD: pipelining not supported, then dropped",
        "E02",
        (NO_PIPELINING,),
        (),
        Verdict.EOD_ACCEPTED,
        closed=True,
        accepted=0,
    ),
    Case(
        "OpenSMTPD, LF-only carrier",
        "E01-L",
        (NO_PIPELINING,),
        (),
        Verdict.EOD_ACCEPTED,
        closed=True,
    ),
    Case("Exim-style sync error first", "E01", (EXIM_SYNC,), (), Verdict.EOD_ACCEPTED),
    Case(
        "sync error only at the closer",
        "E02",
        (),
        (NO_PIPELINING,),
        Verdict.EOD_ACCEPTED,
        closed=True,
    ),
    Case(
        "a 500 without a sync text is a refusal",
        "E02",
        (r(500, "5.5.2 Error: bad syntax"),),
        (),
        Verdict.REJECTED,
        closed=True,
    ),
    Case(
        "a 554 content refusal is a refusal",
        "E02",
        (),
        (r(554, "5.7.1 message refused"),),
        Verdict.REJECTED,
    ),
    Case(
        "hygiene sequence, pipelining not supported",
        "E03",
        (NO_PIPELINING,),
        (),
        Verdict.EOD_ACCEPTED,
        closed=True,
    ),
    # Split write: the replies to each delayed part arrive inside the window.
    Case(
        "split write: each smuggled command executed",
        "E02-S",
        (QUEUED, OK, OK, GO),
        (QUEUED,),
        Verdict.EXPLOITABLE,
        accepted=2,
    ),
    Case("split write: content only", "E02-S", (), (QUEUED,), Verdict.TREATED_AS_CONTENT),
    Case(
        "Exim LF-only carrier: BDAT smuggled accepted",
        "E01-LB",
        (QUEUED, BAD_SYNTAX, OK, OK, QUEUED),
        (),
        Verdict.EXPLOITABLE,
        accepted=2,
    ),
    Case(
        "Exim LF-only carrier: smuggled DATA refused with a sync error",
        "E01-L",
        (QUEUED, BAD_SYNTAX, OK, OK, EXIM_SYNC),
        (),
        Verdict.EOD_ACCEPTED,
        accepted=1,
    ),
    # Controls.
    Case("C01 ends DATA", "C01", (QUEUED,), (), Verdict.PASS),
    Case("C01 refused", "C01", (r(554, "no"),), (), Verdict.FAIL),
    Case("C01 silent", "C01", (), (), Verdict.FAIL),
    Case("C02 stays content", "C02", (), (QUEUED,), Verdict.PASS),
    Case("C02 ended DATA", "C02", (QUEUED,), (), Verdict.FAIL),
    # Real terminator with stray bytes before it.
    Case("stray CR accepted", "E13", (QUEUED,), (), Verdict.TREATED_AS_CONTENT),
    Case("stray NUL refused", "E18", (r(550, "NUL"),), (), Verdict.REJECTED),
    # Protocol probes.
    Case("P01 pipelined transaction accepted", "P01", (OK, OK, GO), (QUEUED,), Verdict.LENIENT),
    Case("P01 stopped at DATA", "P01", (OK, OK, SYNC), (), Verdict.BLOCKED_BY_SYNC, closed=True),
    Case(
        "P03 stopped at the second DATA", "P03", (QUEUED, OK, OK, SYNC), (), Verdict.BLOCKED_BY_SYNC
    ),
    Case("P03 first message refused", "P03", (r(550, "content"),), (), Verdict.REJECTED),
    Case("P04 answered after an early EHLO", "P04", (r(220, "mx"), OK), (), Verdict.LENIENT),
    Case(
        "P04 dropped after an early EHLO",
        "P04",
        (r(220, "mx"),),
        (),
        Verdict.BLOCKED_BY_SYNC,
        closed=True,
    ),
    Case("P05 sync error at EHLO", "P05", (SYNC,), (), Verdict.BLOCKED_BY_SYNC),
    Case("P06 MAIL refused for policy", "P06", (r(550, "5.7.1 sender"),), (), Verdict.REJECTED),
    Case(
        "P06 Exim-style sync",
        "P06",
        (r(554, "SMTP synchronization error"),),
        (),
        Verdict.BLOCKED_BY_SYNC,
    ),
    Case("P07 bare LF accepted", "P07", (OK,), (), Verdict.LENIENT),
    Case("P07 bare LF refused", "P07", (BARE_LF,), (), Verdict.REJECTED),
    Case("P07 dropped", "P07", (), (), Verdict.REJECTED, closed=True),
    Case("E21 NUL command accepted", "E21", (QUEUED, r(221, "bye")), (), Verdict.LENIENT),
    Case("E21 NUL command refused", "E21", (QUEUED, BAD_SYNTAX), (), Verdict.REJECTED),
    Case("P08 injected command discarded", "P08", (r(220, "go ahead"),), (), Verdict.DISCARDED),
    Case(
        "P08 injected command answered in TLS", "P08", (r(220, "go ahead"),), (OK,), Verdict.LENIENT
    ),
    Case("P08 STARTTLS refused", "P08", (r(454, "no TLS"),), (), Verdict.REJECTED),
    Case(
        "P08 handshake failed",
        "P08",
        (r(220, "go ahead"),),
        (),
        Verdict.REJECTED,
        closed=True,
        note="TLS handshake failed: wrong version number",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.probe} {c.name}")
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
