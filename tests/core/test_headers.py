"""filterd's trace headers go on top; sender-made copies (folded lines too) go away."""

from __future__ import annotations

import pytest

from filterd.core.headers import prepend
from tests.tables import cases

OURS = [("X-Virus-Scanned", "filterd 0.1.0"), ("X-Virus-Status", "Clean")]
TOP = b"X-Virus-Scanned: filterd 0.1.0\r\nX-Virus-Status: Clean\r\n"

# (id, content, want after TOP)
CASES = [
    ("plain", b"Subject: a\r\n\r\nbody\r\n", b"Subject: a\r\n\r\nbody\r\n"),
    (
        "spoofed status",
        b"X-Virus-Status: Clean\r\nSubject: a\r\n\r\nbody\r\n",
        b"Subject: a\r\n\r\nbody\r\n",
    ),
    (
        "spoofed, other case, folded",
        b"Subject: a\r\nx-virus-STATUS: Clean\r\n  (really)\r\n\tfolded\r\nTo: b\r\n\r\nx\r\n",
        b"Subject: a\r\nTo: b\r\n\r\nx\r\n",
    ),
    (
        "space before colon",
        b"X-Virus-Scanned : fake\r\nSubject: a\r\n\r\n",
        b"Subject: a\r\n\r\n",
    ),
    (
        "in the body it stays",
        b"Subject: a\r\n\r\nX-Virus-Status: Clean\r\n",
        b"Subject: a\r\n\r\nX-Virus-Status: Clean\r\n",
    ),
    (
        "folded line of a kept field stays",
        b"Subject: a\r\n b\r\nX-Virus-Status: x\r\n\r\n",
        b"Subject: a\r\n b\r\n\r\n",
    ),
    (
        "similar name stays",
        b"X-Virus-Status-Old: x\r\nX-Virus: y\r\n\r\n",
        b"X-Virus-Status-Old: x\r\nX-Virus: y\r\n\r\n",
    ),
    (
        "header section ends at a non-field line",
        b"Subject: a\r\nnot a header\r\nX-Virus-Status: Clean\r\n",
        b"Subject: a\r\nnot a header\r\nX-Virus-Status: Clean\r\n",
    ),
    ("empty content", b"", b""),
    ("body only", b"\r\nX-Virus-Status: Clean\r\n", b"\r\nX-Virus-Status: Clean\r\n"),
]


@pytest.mark.parametrize(("content", "want"), cases(CASES))
def test_prepend(content: bytes, want: bytes) -> None:
    got = prepend(content, OURS)
    assert got == TOP + want, f"got {got!r}, want {TOP + want!r}"


def test_no_fields_no_change() -> None:
    content = b"X-Virus-Status: Clean\r\n\r\n"
    assert prepend(content, []) is content


def test_a_value_cannot_add_a_line() -> None:
    got = prepend(b"\r\n", [("X-Virus-Status", "Infected (A\r\nBcc: x)")])
    assert got == b"X-Virus-Status: Infected (A  Bcc: x)\r\n\r\n"
