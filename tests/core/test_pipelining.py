"""RFC 2920 / RFC 5321 synchronisation rules, as a table of cases.

filterd never offers PIPELINING: every byte sent ahead of a reply is a violation.
"""

from __future__ import annotations

import pytest

from filterd.core.pipelining import (
    BEFORE_GREETING,
    CONNECT,
    END_OF_DATA,
    NOT_OFFERED,
    Violation,
    check,
)
from tests.tables import cases

# (id, after, waiting, want violation or None)
CASES = [
    ("nothing-waiting", "DATA", False, None),
    ("nothing-waiting-before-greeting", CONNECT, False, None),
    ("nothing-waiting-after-dot", END_OF_DATA, False, None),
    ("before-greeting", CONNECT, True, Violation(CONNECT, BEFORE_GREETING)),  # P04
    ("ehlo-then-quit", "EHLO", True, Violation("EHLO", NOT_OFFERED)),  # Thunderbird's pattern
    ("helo-then-anything", "HELO", True, Violation("HELO", NOT_OFFERED)),
    ("data-with-content", "DATA", True, Violation("DATA", NOT_OFFERED)),  # content before 354
    ("data-lowercase", "data", True, Violation("DATA", NOT_OFFERED)),
    ("mail-then-rcpt", "MAIL", True, Violation("MAIL", NOT_OFFERED)),  # P06
    ("rcpt-then-data", "RCPT", True, Violation("RCPT", NOT_OFFERED)),
    ("rset-then-mail", "RSET", True, Violation("RSET", NOT_OFFERED)),
    ("bdat-then-more", "BDAT", True, Violation("BDAT", NOT_OFFERED)),
    ("unknown-verb", "XYZZY", True, Violation("XYZZY", NOT_OFFERED)),
    ("after-dot", END_OF_DATA, True, Violation(END_OF_DATA, NOT_OFFERED)),  # P03
]


@pytest.mark.parametrize(("after", "waiting", "want"), cases(CASES))
def test_check(after: str, waiting: bool, want: Violation | None) -> None:
    got = check(after, waiting=waiting)
    assert got == want, f"check({after!r}, waiting={waiting}) gave {got}, want {want}"
