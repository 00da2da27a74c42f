"""Traces of a smuggled transaction left in the body (filterd/core/traces.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.core.traces import LINE_LIMIT, Trace, TraceScanner, find_command_sequence
from tests.tables import cases

HEAD = b"From: a@example.test\r\nSubject: hi\r\n\r\n"

# (id, content, want trace or None)
CASES = [
    ("plain-text", HEAD + b"Hello,\r\nsee you.\r\n", None),
    ("sequence-crlf", HEAD + b"hi\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nX\r\n",
     Trace(4, 1)),
    ("lower-case", HEAD + b"mail from:<a@x>\r\nrcpt to:<b@y>\r\ndata\r\n", Trace(3, 1)),
    ("two-recipients", HEAD + b"MAIL FROM:<>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n",
     Trace(3, 2)),
    ("bdat-last", HEAD + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 20 LAST\r\n", Trace(3, 1)),
    ("space-before-colon", HEAD + b"MAIL FROM :<a@x>\r\nRCPT TO :<b@y>\r\nDATA\r\n",
     Trace(3, 1)),
    ("fake-dot-became-spaces", HEAD + b"hi . MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
     Trace(3, 1)),
    ("dot-at-line-start", HEAD + b". MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n", Trace(3, 1)),
    ("bare-lf-lines", HEAD + b"hi\n.\nMAIL FROM:<a@x>\nRCPT TO:<b@y>\nDATA\n", Trace(5, 1)),
    ("indented", HEAD + b"  MAIL FROM:<a@x>\r\n  RCPT TO:<b@y>\r\n  DATA\r\n", Trace(3, 1)),
    # Not traces: a quoted command, a partial sequence, the wrong order, prose.
    ("mail-alone", HEAD + b"MAIL FROM:<a@x>\r\nthanks\r\n", None),
    ("no-data", HEAD + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nthanks\r\n", None),
    ("no-rcpt", HEAD + b"MAIL FROM:<a@x>\r\nDATA\r\n", None),
    ("gap-between", HEAD + b"MAIL FROM:<a@x>\r\n\r\nRCPT TO:<b@y>\r\nDATA\r\n", None),
    ("wrong-order", HEAD + b"RCPT TO:<b@y>\r\nMAIL FROM:<a@x>\r\nDATA\r\n", None),
    ("mail-mid-sentence", HEAD + b"please MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n", None),
    ("data-with-words", HEAD + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA follows\r\n", None),
    ("quoted-reply", HEAD + b"> MAIL FROM:<a@x>\r\n> RCPT TO:<b@y>\r\n> DATA\r\n", None),
    ("empty", b"", None),
]  # fmt: skip


@pytest.mark.parametrize(("content", "want"), cases(CASES))
def test_find_command_sequence(content: bytes, want: Trace | None) -> None:
    got = find_command_sequence(content)
    assert got == want, f"got {got}, want {want}"


def test_first_of_several_sequences() -> None:
    seq = b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    assert find_command_sequence(HEAD + seq + b"x\r\n" + seq) == Trace(3, 1)


SEQ = b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"

# (id, content, want): the line limit and where a sequence may be cut between feeds.
LIMITS = [
    ("long-command-line", HEAD + b"MAIL FROM:<" + b"a" * LINE_LIMIT + b">\r\nRCPT TO:<b@y>\r\n"
     b"DATA\r\n", None),
    ("long-text-then-remnant", HEAD + b"x" * 10_000 + b" . MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"
     b"DATA\r\n", Trace(3, 1)),
    ("many-recipients", HEAD + b"MAIL FROM:<a@x>\r\n" + b"RCPT TO:<b@y>\r\n" * 500 + b"DATA",
     Trace(3, 500)),
    ("after-millions-of-empty-lines", b"RCPT TO:<x@y>\r\n" + b"\r\n" * 100_000 + SEQ,
     Trace(100_001, 1)),
]  # fmt: skip


@pytest.mark.parametrize(("content", "want"), cases(LIMITS))
def test_limits_and_long_content(content: bytes, want: Trace | None) -> None:
    assert find_command_sequence(content) == want
    scanner = TraceScanner()
    for start in range(0, len(content), 7):  # small feeds: the sequence is cut everywhere
        scanner.feed(content[start : start + 7])
    scanner.finish()
    assert scanner.trace == want


LINES = [b"MAIL FROM:<a@x>", b"mail from :<>", b"RCPT TO:<b@y>", b"rcpt to:<c>", b"DATA",
         b"BDAT 10 LAST", b"hi . MAIL FROM:<a@x>", b". MAIL FROM:<z>", b"text", b"",
         b" "]  # fmt: skip
ENDS = [b"\r\n", b"\r", b"\n"]


@settings(max_examples=400)
@given(
    parts=st.lists(st.tuples(st.sampled_from(LINES), st.sampled_from(ENDS)), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=15),
)
def test_chunking_never_changes_the_trace(
    parts: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    content = b"".join(line + end for line, end in parts)
    whole = find_command_sequence(content)
    scanner = TraceScanner()
    start = 0
    for cut in [*sorted({min(c, len(content)) for c in cuts}), len(content)]:
        scanner.feed(content[start:cut])
        start = cut
    scanner.finish()
    assert scanner.trace == whole


def test_a_carried_cr_that_turns_out_bare_still_ends_a_line() -> None:
    # Found by fuzzing: a CR at the end of one feed, then a feed without line ends, then one
    # without a colon: the CR is a line end of its own and must be counted.
    scanner = TraceScanner()
    for chunk in [b"a\r\n\r", b"\tBDAT", b"\r\n", SEQ]:
        scanner.feed(chunk)
    scanner.finish()
    assert scanner.trace == Trace(3, 1) == find_command_sequence(b"a\r\n\r\tBDAT\r\n" + SEQ)
