"""One message, one verdict: findings and scan outcomes mapped through the policy."""

from __future__ import annotations

import pytest

from filterd.core import (
    BareNewline,
    InfectedAction,
    InspectorError,
    OversizePolicy,
    Policy,
    ScanOutcome,
    ScanStatus,
    Transaction,
)
from filterd.core import verdict as v

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


@pytest.mark.parametrize(
    ("data", "policy", "scan", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
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
