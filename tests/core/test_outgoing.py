"""The content for the next hop, in pieces: the same bytes as one stuffed, prepended copy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.core import dot_stuff
from filterd.core.headers import prepend
from filterd.core.outgoing import data_pieces
from tests.tables import cases

OURS = [("X-Virus-Scanned", "filterd 0.1.0"), ("X-Virus-Status", "Clean")]
TOP = b"X-Virus-Scanned: filterd 0.1.0\r\nX-Virus-Status: Clean\r\n"

# (id, pieces, want): filterd's fields on top, copies gone, dots stuffed, CRLF at the end.
CASES = [
    ("one piece", [b"Subject: a\r\n\r\nbody\r\n"], TOP + b"Subject: a\r\n\r\nbody\r\n"),
    ("dot line inside a piece", [b"S: a\r\n\r\n.x\r\n"], TOP + b"S: a\r\n\r\n..x\r\n"),
    ("dot first in the next piece", [b"S: a\r\n\r\n", b".x\r\n"], TOP + b"S: a\r\n\r\n..x\r\n"),
    ("CR | LF dot", [b"S: a\r\n\r", b"\n.x\r\n"], TOP + b"S: a\r\n\r\n..x\r\n"),
    ("CRLF | dot over three", [b"S: a\r\n\r", b"\n", b".x"], TOP + b"S: a\r\n\r\n..x\r\n"),
    ("dot first in the content", [b".x\r\n"], TOP + b"..x\r\n"),
    ("no CRLF at the end", [b"S: a\r\n\r\nb", b"ody"], TOP + b"S: a\r\n\r\nbody\r\n"),
    ("ends in a bare CR", [b"S: a\r\n\r\nx\r"], TOP + b"S: a\r\n\r\nx\r\r\n"),
    (
        "spoofed status in the first piece",
        [b"X-Virus-Status: Infected\r\nS: a\r\n\r\n", b"body\r\n"],
        TOP + b"S: a\r\n\r\nbody\r\n",
    ),
    (
        "header section spans pieces",
        [b"S: a\r\nX-Virus-Sta", b"tus: Infected\r\n\r\nbody\r\n"],
        TOP + b"S: a\r\n\r\nbody\r\n",
    ),
    ("empty pieces", [b"", b"S: a\r\n", b""], TOP + b"S: a\r\n"),
    ("no content", [], TOP),
]


@pytest.mark.parametrize(("pieces", "want"), cases(CASES))
def test_data_pieces(pieces: list[bytes], want: bytes) -> None:
    got = b"".join(data_pieces(pieces, OURS))
    assert got == want
    assert got == dot_stuff(prepend(b"".join(pieces), OURS)), "not what one copy would be"


def test_no_fields_and_no_dot_lines_send_the_pieces_themselves() -> None:
    pieces = [b"S: a\r\n\r\n", b"x" * 100 + b"\r\n"]
    got = data_pieces(pieces, [], dot_lines=False)
    assert got == pieces
    assert all(g is p for g, p in zip(got, pieces, strict=True)), "a piece was copied"


def test_a_large_body_is_not_copied_when_the_header_section_ends_in_the_first_piece() -> None:
    body = b"y" * 100_000 + b"\r\n"
    got = data_pieces([b"S: a\r\n\r\n", body], OURS, dot_lines=False)
    assert got[-1] is body


ATOMS = [b"\r", b"\n", b"\r\n", b".", b"..", b"\r\n.", b"a", b":", b" ",
         b"X-Virus-Status: x", b"X-Virus-Scanned:", b"\r\n\r\n"]  # fmt: skip


@settings(max_examples=400)
@given(
    content=st.lists(st.sampled_from(ATOMS), max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    with_fields=st.booleans(),
)
def test_any_cut_gives_the_bytes_of_one_copy(
    content: bytes, cuts: list[int], with_fields: bool
) -> None:
    points = sorted({min(cut, len(content)) for cut in cuts})
    pieces = [content[a:b] for a, b in zip([0, *points], [*points, len(content)], strict=True)]
    fields = OURS if with_fields else []
    want = dot_stuff(prepend(content, fields))
    assert b"".join(data_pieces(pieces, fields)) == want
