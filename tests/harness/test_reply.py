"""Reply parsing: any chunking of the server's bytes gives the same replies."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filterd.harness.reply import Reply, ReplyParser

EHLO = b"250-mx.example.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
STREAM = b"220 mx ESMTP\r\n" + EHLO + b"354 go\r\n550 5.5.2 bare <LF>\n"


def parse(chunks: list[bytes]) -> list[tuple[int, tuple[str, ...]]]:
    parser = ReplyParser()
    replies: list[Reply] = []
    for chunk in chunks:
        replies += parser.feed(chunk, 0.0)
    return [(reply.code, reply.lines) for reply in replies]


WANT = [
    (220, ("mx ESMTP",)),
    (250, ("mx.example.test", "PIPELINING", "CHUNKING")),
    (354, ("go",)),
    (550, ("5.5.2 bare <LF>",)),
]


def test_one_chunk() -> None:
    assert parse([STREAM]) == WANT


def test_byte_by_byte() -> None:
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == WANT


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert parse(chunks) == WANT


@pytest.mark.parametrize(
    ("line", "code", "text"),
    [
        (b"250 ok\r\n", 250, "ok"),
        (b"250\r\n", 250, ""),
        (b"garbage\r\n", 0, "garbage"),
        (b"25x oops\r\n", 0, "25x oops"),
    ],
)
def test_single_lines(line: bytes, code: int, text: str) -> None:
    assert parse([line]) == [(code, (text,))]


def test_incomplete_line_is_pending() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-first\r\n250 sec", 0.0) == []
    assert parser.pending == b"250 sec"
