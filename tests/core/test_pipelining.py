"""RFC 2920 / RFC 5321 synchronisation rules, as a table of cases."""

from __future__ import annotations

import pytest

from filterd.core.pipelining import CONNECT, END_OF_DATA, check

# (id, after, waiting, pipelining offered, violation expected)
CASES = [
    ("nothing-waiting", "DATA", False, False, False),
    ("before-greeting", CONNECT, True, True, True),  # P04
    ("before-greeting-quiet", CONNECT, False, False, False),
    ("ehlo-then-quit", "EHLO", True, True, True),  # P05, Thunderbird's pattern
    ("helo-then-anything", "HELO", True, True, True),
    ("data-with-content", "DATA", True, True, True),  # content before 354
    ("data-lowercase", "data", True, True, True),
    ("mail-rcpt-pipelined", "MAIL", True, True, False),  # RFC 2920 allows it
    ("rcpt-pipelined", "RCPT", True, True, False),
    ("rset-pipelined", "RSET", True, True, False),
    ("mail-not-offered", "MAIL", True, False, True),  # P06
    ("rcpt-not-offered", "RCPT", True, False, True),
    ("noop-last", "NOOP", True, True, True),
    ("vrfy-last", "VRFY", True, True, True),
    ("expn-last", "EXPN", True, True, True),
    ("quit-last", "QUIT", True, True, True),
    ("starttls-last", "STARTTLS", True, True, True),  # P08
    ("bdat-pipelined", "BDAT", True, True, False),  # RFC 3030
    ("auth-ends-group", "AUTH", True, True, True),  # extension commands end a group
    ("unknown-ends-group", "XYZZY", True, True, True),
    ("after-dot-offered", END_OF_DATA, True, True, False),  # RFC 2920: content starts a group
    ("after-dot-not-offered", END_OF_DATA, True, False, True),  # P03 without PIPELINING
]


@pytest.mark.parametrize(
    ("after", "waiting", "offered", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_check(after: str, waiting: bool, offered: bool, want: bool) -> None:
    got = check(after, waiting=waiting, pipelining_offered=offered)
    assert (got is not None) == want, f"check({after!r}) gave {got}, want violation={want}"
    if got is not None:
        assert got.rule, "a violation names its authority"
