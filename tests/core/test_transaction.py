"""One message, one verdict: findings and scan outcomes mapped through the policy."""

from __future__ import annotations

import pytest

from filterd.core import (
    BareNewline,
    Framing,
    InfectedAction,
    InspectorError,
    OversizePolicy,
    Policy,
    ScanOutcome,
    ScanStatus,
    Traces,
    Transaction,
)
from filterd.core import verdict as v
from filterd.core.findings import Kind
from tests.tables import cases

CLEAN = ScanOutcome(ScanStatus.CLEAN)
INFECTED = ScanOutcome(ScanStatus.INFECTED, virus="Test.Sig.UNOFFICIAL")
ERROR = ScanOutcome(ScanStatus.ERROR, reason="connection refused")
OVERSIZE = ScanOutcome(ScanStatus.OVERSIZE)

OK_DATA = b"Subject: x\r\n\r\nhello\r\n.\r\n"
BARE_LF_DATA = b"Subject: x\r\n\r\nhel\nlo\r\n.\r\n"
BARE_CR_DATA = b"Subject: x\r\n\r\nhel\rlo\r\n.\r\n"
SMUGGLE_DATA = (
    b"Subject: x\r\n\r\nhello\n.\r\nmail FROM:<s@x>\r\nrcpt TO:<t@y>\r\ndata\r\nz\r\n.\r\n"
)

REJECT = BareNewline.REJECT
NO = BareNewline.NO

# (id, data, policy, scan outcome or None, want reply line)
CASES = [
    ("clean", OK_DATA, Policy(), CLEAN, "250 2.0.0 Ok"),
    ("infected", OK_DATA, Policy(), INFECTED, "550 5.7.1 Virus found: Test.Sig.UNOFFICIAL"),
    ("infected-tempfail", OK_DATA, Policy(infected=InfectedAction.TEMPFAIL), INFECTED,
     "451 4.7.1 Virus found: Test.Sig.UNOFFICIAL"),
    ("scan-error-fails-closed", OK_DATA, Policy(), ERROR,
     "451 4.7.1 Error: virus scanner unavailable, try again later"),
    ("scan-error-fail-open", OK_DATA, Policy(fail_open=True), ERROR, "250 2.0.0 Ok"),
    ("oversize-tempfail", OK_DATA, Policy(), OVERSIZE,
     "452 4.3.4 Error: message too large to scan"),
    ("oversize-accept", OK_DATA, Policy(oversize=OversizePolicy.ACCEPT), OVERSIZE, "250 2.0.0 Ok"),
    ("bare-lf-normalize", BARE_LF_DATA, Policy(), CLEAN, "250 2.0.0 Ok"),
    ("bare-lf-reject", BARE_LF_DATA, Policy(forbid_bare_newline=REJECT), None,
     "550 5.5.2 Error: bare <LF> received"),
    ("bare-lf-reject-521", BARE_LF_DATA,
     Policy(forbid_bare_newline=REJECT, bare_newline_reject_code=521), None,
     "521 5.5.2 Error: bare <LF> received"),
    ("bare-cr-reject", BARE_CR_DATA, Policy(forbid_bare_newline=REJECT), None,
     "550 5.5.2 Error: bare <CR> received"),
    ("smuggling-normalize", SMUGGLE_DATA, Policy(), None,
     "550 5.5.2 Error: non-standard end-of-data sequence (SMTP smuggling)"),
    ("smuggling-reject-wins-over-bare-lf", SMUGGLE_DATA, Policy(forbid_bare_newline=REJECT), None,
     "550 5.5.2 Error: non-standard end-of-data sequence (SMTP smuggling)"),
    ("smuggling-no-passes", SMUGGLE_DATA, Policy(forbid_bare_newline=NO), CLEAN, "250 2.0.0 Ok"),
    ("too-large", OK_DATA, Policy(max_message_size=5), None,
     "552 5.3.4 Error: message file too big"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "policy", "scan", "want"), cases(CASES))
def test_verdict(data: bytes, policy: Policy, scan: ScanOutcome | None, want: str) -> None:
    txn = Transaction(policy)
    txn.feed(data)
    framing = txn.framing_verdict()
    assert (framing is None) == (scan is not None), f"framing verdict {framing}"
    got = txn.verdict(scan)
    assert got.reply == want, f"got {got.reply!r}, want {want!r}"


def test_framing_reject_skips_the_scan() -> None:
    txn = Transaction(Policy())
    txn.feed(SMUGGLE_DATA)
    assert txn.verdict(None).reason == "smuggling"


def test_verdict_without_scan_when_scan_is_needed() -> None:
    txn = Transaction(Policy())
    txn.feed(OK_DATA)
    with pytest.raises(InspectorError):
        txn.verdict(None)


def test_fail_open_is_its_own_reason() -> None:
    # The pipeline logs a warning for each message let through by fail-open: it needs to know.
    txn = Transaction(Policy(fail_open=True))
    txn.feed(OK_DATA)
    assert txn.verdict(ERROR) is v.ACCEPT_SCANNER_FAIL_OPEN


# Once the message is refused whatever follows, only the end of data and the size are
# tracked: later findings are not collected, the verdict never changes.
# (id, data, policy, want reply, want finding counts {kind: count} for the kinds listed)
FAKE = b"Subject: x\r\n\r\nhello\n.\r\n"  # bare LF, fake end of data at offset 21
AFTER = b"mail FROM:<s@x>\r\nrcpt TO:<t@y>\r\ndata\r\n" + b"a\nb\rc\r\n" * 3
REFUSED = [
    ("fake-then-more-findings", FAKE + AFTER + b".\r\n", Policy(),
     "550 5.5.2 Error: non-standard end-of-data sequence (SMTP smuggling)",
     {Kind.FAKE_END_OF_DATA: 1, Kind.BARE_LF: 1}),
    ("fake-then-too-large", FAKE + b"x" * 200 + b"\r\n.\r\n", Policy(max_message_size=100),
     "552 5.3.4 Error: message file too big", {Kind.FAKE_END_OF_DATA: 1}),
    ("reject-bare-lf-then-fake", b"a\nb\r\n" + FAKE + b".\r\n",
     Policy(forbid_bare_newline=BareNewline.REJECT),
     "550 5.5.2 Error: non-standard end-of-data sequence (SMTP smuggling)",
     {Kind.BARE_LF: 2, Kind.FAKE_END_OF_DATA: 1}),
    ("reject-bare-cr-then-bare-lf", b"a\rb\r\nc\nd\r\n.\r\n",
     Policy(forbid_bare_newline=BareNewline.REJECT), "550 5.5.2 Error: bare <LF> received",
     {Kind.BARE_CR: 1, Kind.BARE_LF: 1}),
    ("no-mode-inspects-on", FAKE + AFTER + b".\r\n", Policy(forbid_bare_newline=NO),
     "250 2.0.0 Ok", {Kind.FAKE_END_OF_DATA: 1, Kind.SMUGGLED_COMMAND: 3, Kind.BARE_LF: 4}),
]  # fmt: skip


@pytest.mark.parametrize(("data", "policy", "want", "want_counts"), cases(REFUSED))
def test_refused_message_is_no_longer_inspected(
    data: bytes, policy: Policy, want: str, want_counts: dict[Kind, int]
) -> None:
    # Fed line by line, so that the refusal happens before the rest is seen.
    txn = Transaction(policy)
    for line in data.splitlines(keepends=True):
        txn.feed(line)
    assert txn.done
    got = txn.verdict(CLEAN)
    assert got.reply == want, f"got {got.reply!r}, want {want!r}"
    got_counts = {kind: txn.findings.count(kind) for kind in want_counts}
    assert got_counts == want_counts
    if got.action is not v.Action.ACCEPT:
        assert txn.content() == b"", "a refused message keeps no content"


def test_size_is_exact_after_a_refusal() -> None:
    # The size still counts the normalised content (bare LF as CRLF, stuffing dots removed):
    # fed line by line (skipped after the fake end) it equals one feed (all inspected).
    data = FAKE + b"a\nb\r\n..c\r\n" * 10 + b".\r\n"
    whole = Transaction(Policy())
    whole.feed(data)
    by_line = Transaction(Policy())
    for line in data.splitlines(keepends=True):
        by_line.feed(line)
    assert whole.framing_verdict() is by_line.framing_verdict() is v.REJECT_SMUGGLING
    assert by_line.inspector.size == whole.inspector.size == 123


TRACE_BODY = b"Subject: q\r\n\r\nwe saw:\r\nMAIL FROM:<e@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n.\r\n"

# (id, policy traces word, override, want reply, want trace line or None)
TRACES = [
    ("note-default", Traces.NOTE, None, "250 2.0.0 Ok", 3),
    ("reject", Traces.REJECT, None,
     "550 5.7.1 Error: message contains an SMTP command sequence (SMTP smuggling)", 3),
    ("no", Traces.NO, None, "250 2.0.0 Ok", None),
    ("override-reject", Traces.NOTE, Traces.REJECT,
     "550 5.7.1 Error: message contains an SMTP command sequence (SMTP smuggling)", 3),
    ("override-no", Traces.REJECT, Traces.NO, "250 2.0.0 Ok", None),
]  # fmt: skip


@pytest.mark.parametrize(("word", "override", "want", "want_line"), cases(TRACES))
@pytest.mark.parametrize("framing", list(Framing))
def test_traces_policy(
    word: Traces, override: Traces | None, want: str, want_line: int | None, framing: Framing
) -> None:
    txn = Transaction(Policy(traces=word), framing, traces=override)
    data = TRACE_BODY if framing is Framing.SMTP_DATA else TRACE_BODY[:-3]
    for line in data.splitlines(keepends=True):
        txn.feed(line)
    if framing is Framing.MESSAGE:
        txn.finish()
    got = txn.verdict(CLEAN)
    assert got.reply == want
    assert (txn.trace.line if txn.trace else None) == want_line


def test_a_fake_end_wins_over_a_trace() -> None:
    txn = Transaction(Policy(traces=Traces.REJECT))
    txn.feed(b"hi\n.\nMAIL FROM:<e@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n.\r\n")
    assert txn.verdict(None) is v.REJECT_SMUGGLING
