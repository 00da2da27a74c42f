"""Content kept as immutable pieces: joined, it is what was appended; new pieces come once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from filterd.core.pieces import MIN_PIECE, Pieces


def test_a_long_append_is_kept_as_it_is() -> None:
    block = b"x" * MIN_PIECE
    pieces = Pieces()
    pieces.append(b"ab")
    pieces.append(block)
    pieces.finish()
    assert pieces.all() == (b"ab", block)
    assert pieces.all()[1] is block, "a long block was copied"


def test_short_appends_are_gathered() -> None:
    pieces = Pieces()
    for _ in range(MIN_PIECE + 10):
        pieces.append(b"x")
    pieces.finish()
    assert [len(piece) for piece in pieces.all()] == [MIN_PIECE, 10]


def test_joined_replaces_the_pieces() -> None:
    pieces = Pieces()
    pieces.append(b"a" * MIN_PIECE)
    pieces.append(b"b" * MIN_PIECE)
    whole = pieces.joined()
    assert whole == b"a" * MIN_PIECE + b"b" * MIN_PIECE
    assert pieces.all() == (whole,), "the content would be held twice"
    assert pieces.size == len(whole)


def test_clear() -> None:
    pieces = Pieces()
    pieces.append(b"a" * MIN_PIECE)
    pieces.clear()
    assert (pieces.joined(), pieces.size, pieces.new()) == (b"", 0, [])


@given(st.lists(st.binary(max_size=3 * MIN_PIECE // 2), max_size=12), st.integers(0, 12))
def test_new_gives_every_piece_once_in_order(appends: list[bytes], every: int) -> None:
    pieces = Pieces()
    given_out: list[bytes] = []
    for number, data in enumerate(appends):
        pieces.append(data)
        if every and number % every == 0:
            given_out += pieces.new()
    pieces.finish()
    given_out += pieces.new()
    assert b"".join(given_out) == b"".join(appends)
    assert pieces.new() == []
    assert pieces.joined() == b"".join(appends)
    small = [len(piece) for piece in pieces.all()[:-1] if len(piece) < MIN_PIECE]
    assert len(small) <= len(appends), "more short pieces than appends"
