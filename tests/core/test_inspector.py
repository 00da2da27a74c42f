"""Byte-exact cases for the content inspector: smuggling variants, normalisation, framing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from filterd.core import BareNewline, ContentInspector, Framing, InspectorError, Kind, dot_stuff
from tests.core.variants import (
    BODY,
    CONTROLS,
    END,
    FAKE_TERMINATORS,
    SMUGGLED,
    sec_layout,
    smtpsmug_layout,
)
from tests.tables import cases

LF, CR, NUL = Kind.BARE_LF, Kind.BARE_CR, Kind.NUL
FAKE, CMD, DOT = Kind.FAKE_END_OF_DATA, Kind.SMUGGLED_COMMAND, Kind.UNSTUFFED_DOT


def inspect(
    data: bytes,
    mode: BareNewline = BareNewline.NORMALIZE,
    framing: Framing = Framing.SMTP_DATA,
    max_size: int = 10_240_000,
) -> ContentInspector:
    inspector = ContentInspector(mode, framing, max_size)
    inspector.feed(data)
    inspector.finish()
    return inspector


def kinds(inspector: ContentInspector) -> set[Kind]:
    return {finding.kind for finding in inspector.findings.as_list()}


# SEC Consult's layout: what each sequence of docs/explanation/smuggling.md leaves in the
# findings, and whether the real terminator came first (the smuggled commands then wait as
# trailing input, for the pipelining check). Worked out by hand from the bytes, not from a run
# of the inspector.
SEC_CASES: dict[str, tuple[set[Kind], bool]] = {
    "E01": ({LF, FAKE, CMD}, False),
    "E02": ({LF, FAKE, CMD}, False),
    "E03": ({LF, FAKE, CMD}, False),
    "E04": ({CR, FAKE, CMD}, False),
    "E05": ({CR, LF, FAKE, CMD}, False),
    "E06": ({LF, CR, FAKE, CMD}, False),
    "E07": ({CR, FAKE, CMD}, False),
    "E08": ({CR, FAKE, CMD}, False),
    "E09": ({NUL, FAKE, CMD}, False),
    "E10": ({NUL, FAKE, CMD}, False),
    "E11": ({CR, FAKE, CMD}, False),
    "E12": ({CR, FAKE, CMD}, False),
    "E13": ({CR}, True),
    "E14": ({LF, FAKE, CMD}, False),
    "E15": ({NUL, CR, FAKE, CMD}, False),
    "E16": ({NUL, LF, FAKE, CMD}, False),
    "E17": (set(), True),
    "E18": ({NUL}, True),
    "E19": ({CR, NUL, LF, FAKE, CMD}, False),
    "E20": ({CR, NUL, LF, FAKE, CMD}, False),
    "E21": (set(), True),
    "E22": ({FAKE, CMD}, False),
}


def test_sec_cases_cover_every_variant() -> None:
    assert set(SEC_CASES) == set(FAKE_TERMINATORS)


@pytest.mark.parametrize("variant", sorted(SEC_CASES))
def test_variant_in_sec_layout(variant: str) -> None:
    want_kinds, want_early_end = SEC_CASES[variant]
    got = inspect(sec_layout(FAKE_TERMINATORS[variant]))
    assert got.done, f"{variant}: data never ended"
    assert kinds(got) == want_kinds, f"{variant}: got {kinds(got)}, want {want_kinds}"
    if want_early_end:
        # The smuggled transaction is input after the end of data: never content.
        assert got.trailing.endswith(SMUGGLED.lstrip(b"\r\n")), f"{variant}: {got.trailing!r}"
        assert b"smuggled@" not in got.content()
    else:
        assert got.trailing == b"", f"{variant}: trailing {got.trailing!r}"
        assert got.findings.count(CMD) == 3, f"{variant}: MAIL, RCPT and DATA are all found"


# Why each variant is flagged, worked out from the bytes. Most are a fake end of data inside
# the content (FAKE_END_OF_DATA). Four hold a real <CRLF>.<CRLF>, so data ends there and what
# follows waits as input after the end of data, which the pipelining check refuses; in
# smtpsmug's layout that input is exactly:
EARLY_END_TRAILING = {
    "E13": END,  # <CR> then a real <CRLF>.<CRLF>; smtpsmug's own terminator follows
    "E17": b".\r\n",  # <CRLF>. then smtpsmug's <CRLF>.<CRLF>: the real end, and ".<CRLF>"
    "E18": END,  # <NUL> then a real <CRLF>.<CRLF>
    "E21": b"\x00" + END,  # a real <CRLF>.<CRLF>, then <NUL>
}


@pytest.mark.parametrize("variant", sorted(FAKE_TERMINATORS))
@pytest.mark.parametrize("layout", [sec_layout, smtpsmug_layout], ids=["sec", "smtpsmug"])
def test_every_variant_is_flagged(variant: str, layout: Callable[[bytes], bytes]) -> None:
    got = inspect(layout(FAKE_TERMINATORS[variant]))
    assert got.done, f"{variant}: data never ended"
    if variant not in EARLY_END_TRAILING:
        assert FAKE in kinds(got), f"{variant}: no fake end of data in {kinds(got)}"
        assert got.trailing == b"", f"{variant}: trailing {got.trailing!r}"
    elif layout is smtpsmug_layout:
        assert got.trailing == EARLY_END_TRAILING[variant], f"{variant}: {got.trailing!r}"
    else:
        assert got.trailing.endswith(SMUGGLED.lstrip(b"\r\n")), f"{variant}: {got.trailing!r}"


def test_early_end_variants_are_those_of_the_sec_table() -> None:
    early = {variant for variant, (_, early_end) in SEC_CASES.items() if early_end}
    assert early == set(EARLY_END_TRAILING)


# (control, what follows the body, want content after the body, want trailing)
CONTROL_CASES = [
    ("C01", CONTROLS["C01"], b"\r\n", b""),  # ends DATA, nothing after it
    ("C02", CONTROLS["C02"] + b"end" + END, b"\r\n.\r\nend\r\n", b""),  # ".." is content "."
]


@pytest.mark.parametrize(
    ("after_body", "want_content", "want_trailing"),
    cases(CONTROL_CASES),
)
def test_controls_are_not_flagged(
    after_body: bytes, want_content: bytes, want_trailing: bytes
) -> None:
    got = inspect(BODY + after_body)
    assert kinds(got) == set(), f"got {kinds(got)}, want none"
    assert got.content() == BODY + want_content, f"got {got.content()!r}"
    assert got.trailing == want_trailing


# (id, data on the wire after DATA, mode, want content, want finding kinds)
NORMALISATION = [
    ("plain", b"a\r\nb\r\n.\r\n", BareNewline.NORMALIZE, b"a\r\nb\r\n", set()),
    ("empty", b".\r\n", BareNewline.NORMALIZE, b"", set()),
    ("stuffed", b"..x\r\n..\r\n...\r\n.\r\n", BareNewline.NORMALIZE, b".x\r\n.\r\n..\r\n", set()),
    ("bare-lf", b"a\nb\r\n.\r\n", BareNewline.NORMALIZE, b"a\r\nb\r\n", {LF}),
    ("bare-cr", b"a\rb\r\n.\r\n", BareNewline.NORMALIZE, b"a b\r\n", {CR}),
    ("cr-before-crlf", b"a\r\r\n.\r\n", BareNewline.NORMALIZE, b"a \r\n", {CR}),
    ("lf-then-stuffed", b"a\n..b\r\n.\r\n", BareNewline.NORMALIZE, b"a\r\n.b\r\n", {LF}),
    ("cr-then-dot", b"a\r.b\r\n.\r\n", BareNewline.NORMALIZE, b"a .b\r\n", {CR}),
    ("unstuffed-dot", b".x\r\n.\r\n", BareNewline.NORMALIZE, b"x\r\n", {DOT}),
    ("nul-kept", b"a\x00b\r\n.\r\n", BareNewline.NORMALIZE, b"a\x00b\r\n", {NUL}),
    ("indented-dot", b" .\r\n\t.\r\n.\r\n", BareNewline.NORMALIZE, b" .\r\n\t.\r\n", set()),
    ("note-as-normalize", b"a\nb\r\n.\r\n", BareNewline.NOTE, b"a\r\nb\r\n", {LF}),
    # Refused whatever follows: the content is not kept (the findings still are).
    ("reject-drops-content", b"a\nb\r\n.\r\n", BareNewline.REJECT, b"", {LF}),
    ("no-keeps-lf", b"a\nb\r\n.\r\n", BareNewline.NO, b"a\nb\r\n", {LF}),
    ("no-keeps-cr", b"a\rb\r\n.\r\n", BareNewline.NO, b"a\rb\r\n", {CR}),
    ("long-line", b"x" * 5000 + b"\r\n.\r\n", BareNewline.NORMALIZE, b"x" * 5000 + b"\r\n", set()),
    ("8bit", "é\r\n".encode() + b".\r\n", BareNewline.NORMALIZE, "é\r\n".encode(), set()),
]


@pytest.mark.parametrize(
    ("data", "mode", "want", "want_kinds"),
    cases(NORMALISATION),
)
def test_normalisation(data: bytes, mode: BareNewline, want: bytes, want_kinds: set[Kind]) -> None:
    got = inspect(data, mode)
    assert got.content() == want, f"got {got.content()!r}, want {want!r}"
    assert kinds(got) == want_kinds, f"got {kinds(got)}, want {want_kinds}"


# MESSAGE framing: content as a milter or a file gives it, not stuffed, no terminator.
MESSAGES = [
    ("dot-line-is-content", b"a\r\n.\r\nb", b"a\r\n.\r\nb", set()),
    ("dot-space-is-content", b"a\r\n. \r\n", b"a\r\n. \r\n", set()),
    ("lf-dot-lf-is-fake", b"a\n.\nMAIL FROM:<x>\r\n", b"", {LF, FAKE, CMD}),  # refused: dropped
    ("no-final-crlf", b"a\r\nb", b"a\r\nb", set()),
]  # fmt: skip


@pytest.mark.parametrize(("data", "want", "want_kinds"), cases(MESSAGES))
def test_message_framing(data: bytes, want: bytes, want_kinds: set[Kind]) -> None:
    got = inspect(data, framing=Framing.MESSAGE)
    assert got.content() == want, f"got {got.content()!r}, want {want!r}"
    assert kinds(got) == want_kinds, f"got {kinds(got)}, want {want_kinds}"


def test_trailing_input_is_kept_and_grows() -> None:
    inspector = ContentInspector()
    inspector.feed(b"a\r\n.\r\nQUIT")
    inspector.feed(b"\r\n")
    assert inspector.done
    assert inspector.trailing == b"QUIT\r\n"
    assert inspector.content() == b"a\r\n"


def test_first_offset_points_at_the_byte() -> None:
    data = b"abc\r\nde\nf\r\n.\r\n"
    got = inspect(data)
    (finding,) = got.findings.as_list()
    assert data[finding.first_offset : finding.first_offset + 1] == b"\n"


@pytest.mark.parametrize(
    ("chunks", "max_size"),
    [
        ([b"0123456789ab\r\n.\r\n"], 10),
        ([b"x" * 30, b"x" * 30, b"\r\n.\r\n"], 20),  # one long line, never complete
    ],
    ids=["whole-lines", "one-long-line"],
)
def test_too_large_reads_to_the_end(chunks: list[bytes], max_size: int) -> None:
    inspector = ContentInspector(max_size=max_size)
    for chunk in chunks:
        inspector.feed(chunk)
    assert inspector.done, "a too large message is still read to its real end (delayed reject)"
    assert inspector.too_large
    assert inspector.content() == b""


@pytest.mark.parametrize(
    "misuse",
    [
        lambda i: i.finish(),
        lambda i: i.content(),
    ],
    ids=["finish-before-end", "content-before-end"],
)
def test_misuse_raises_core_error(misuse: object) -> None:
    inspector = ContentInspector()
    inspector.feed(b"a\r\n")
    assert callable(misuse)
    with pytest.raises(InspectorError):
        misuse(inspector)


def test_feed_after_finish_in_message_framing() -> None:
    inspector = inspect(b"a\r\n", framing=Framing.MESSAGE)
    with pytest.raises(InspectorError):
        inspector.feed(b"b")


# (id, content, want on the wire before ".\r\n")
STUFFING = [
    ("plain", b"a\r\n", b"a\r\n"),
    ("leading-dot", b".a\r\n", b"..a\r\n"),
    ("dot-line", b"a\r\n.\r\n", b"a\r\n..\r\n"),
    ("no-final-crlf", b"a", b"a\r\n"),
    ("empty", b"", b""),
]


@pytest.mark.parametrize(("content", "want"), cases(STUFFING))
def test_dot_stuff(content: bytes, want: bytes) -> None:
    got = dot_stuff(content)
    assert got == want, f"got {got!r}, want {want!r}"


def test_dot_after_an_over_long_line_is_not_a_terminator() -> None:
    # Review finding F1: a line longer than the size limit is cut; the "." that ends it must
    # not be taken for the start of a line when the CRLF arrives in the next read.
    inspector = ContentInspector(max_size=1000)
    inspector.feed(b"A" * 1100 + b".")
    inspector.feed(b"\r\nMAIL FROM:<evil@example.test>\r\nDATA\r\n")
    assert not inspector.done, f"data ended early, trailing {inspector.trailing!r}"
    inspector.feed(b"x\r\n.\r\nQUIT\r\n")
    assert inspector.done
    assert inspector.trailing == b"QUIT\r\n"
    assert inspector.too_large


# Content shapes with no CRLF, or one endless segment: the inspector holds only a bounded
# number of unprocessed bytes between feeds, whatever the shape ("no" mode: nothing is
# refused, every byte is inspected). (id, repeated unit)
ENDLESS = [
    ("no-crlf-mix", b"\r.\x00\r\x00."),
    ("one-long-line", b"x"),
    ("spaces-after-a-bare-lf", b" "),
    ("nul-run", b"\x00"),
    ("cr-run", b"\r"),
    ("lf-run", b"\n"),
    ("dot-runs", b"\n. . ."),
]


@pytest.mark.parametrize("unit", [e[1] for e in ENDLESS], ids=[e[0] for e in ENDLESS])
@pytest.mark.parametrize("framing", list(Framing))
def test_unprocessed_bytes_stay_bounded(unit: bytes, framing: Framing) -> None:
    inspector = ContentInspector(BareNewline.NO, framing, max_size=10_000_000, run_limit=50)
    inspector.feed(b"a\n")
    worst = 0
    for _ in range(300):
        inspector.feed(unit * (1000 // len(unit)))
        # In "no" mode the content is the input unstuffed: what is not yet output is pending.
        worst = max(worst, inspector.buffered - inspector.size)
    assert worst <= 2 * 50 + 12, f"{worst} bytes held back"


# The run limit (here 4): a "." or a line start followed by a longer run of NUL, space or tab
# is a fake end of data whatever follows; a command after a longer run is not one.
# (id, data after DATA, framing, want kinds)
RUNS = [
    ("dot-then-short-run", b"a\r\n.    x\r\n.\r\n", Framing.SMTP_DATA, {DOT}),
    ("dot-then-long-run", b"a\r\n.     x\r\n.\r\n", Framing.SMTP_DATA, {FAKE}),
    ("nul-run-then-dot", b"a\r\n\x00\x00\x00\x00.\r\n.\r\n", Framing.SMTP_DATA, {NUL, FAKE}),
    ("long-nul-run", b"a\r\n\x00\x00\x00\x00\x00x\r\n.\r\n", Framing.SMTP_DATA, {NUL, FAKE}),
    ("short-nul-run", b"a\r\n\x00\x00\x00\x00x\r\n.\r\n", Framing.SMTP_DATA, {NUL}),
    ("message-dot-short-run", b"a\r\n.    \r\nb", Framing.MESSAGE, set()),
    ("message-dot-long-run", b"a\r\n.     \r\nb", Framing.MESSAGE, {FAKE}),
    ("command-after-long-run", b"a\n.\n     DATA\r\n.\r\n", Framing.SMTP_DATA, {LF, FAKE}),
    ("command-after-short-run", b"a\n.\n    DATA\r\n.\r\n", Framing.SMTP_DATA, {LF, FAKE, CMD}),
]  # fmt: skip


@pytest.mark.parametrize(("data", "framing", "want_kinds"), cases(RUNS))
def test_run_limit(data: bytes, framing: Framing, want_kinds: set[Kind]) -> None:
    inspector = ContentInspector(BareNewline.NO, framing, run_limit=4)
    for index in range(len(data)):  # byte by byte: every cut the logic allows
        inspector.feed(data[index : index + 1])
    inspector.finish()
    assert kinds(inspector) == want_kinds, f"got {kinds(inspector)}, want {want_kinds}"


# The clean path's check for a "." line with a run longer than the run limit (here 4), on
# whole blocks (fed at once, so the clean path sees them): at the block's start, after an LF,
# with tabs, and the near misses. (id, message, want kinds)
LONG_DOT_BLOCKS = [
    ("first-line-long-run", b".     \r\nb\r\n", {FAKE}),
    ("first-line-short-run", b".    \r\nb\r\n", set()),
    ("later-line-long-run", b"a\r\n.\r\nb\r\n. \t \t \r\nc\r\n", {FAKE}),
    ("later-line-short-run", b"a\r\n.\r\nb\r\n. \t \t\r\nc\r\n", set()),
    ("long-run-not-after-a-dot", b"a\r\nx.     \r\n", set()),
    ("long-run-after-text", b"a\r\n.x     \r\n", set()),
    ("dot-lines-only", b".\r\n..\r\n. x\r\n", set()),
]


@pytest.mark.parametrize(("data", "want_kinds"), cases(LONG_DOT_BLOCKS))
def test_long_dot_line_in_a_whole_block(data: bytes, want_kinds: set[Kind]) -> None:
    inspector = ContentInspector(BareNewline.NORMALIZE, Framing.MESSAGE, run_limit=4)
    inspector.feed(data)
    inspector.finish()
    assert kinds(inspector) == want_kinds, f"got {kinds(inspector)}, want {want_kinds}"
    if not want_kinds:
        assert inspector.content() == data


# MESSAGE framing counts fake "." segments with one pattern (no Python loop per match).
# (id, message, want fake count)
MESSAGE_FAKES = [
    ("cr-framed", b"a\r.\rb\r.\r", 2),
    ("crlf-framed-is-content", b"a\r\n.\r\nb\r\n.\r\n", 0),
    ("crlf-then-bare-cr", b"a\r\n.\rb", 1),
    ("bare-lf-then-crlf", b"a\n.\r\nb", 1),
    ("at-the-end", b"a\r\n.", 0),
    ("nul-padded", b"a\r\x00.\x00\r", 1),
]


@pytest.mark.parametrize(("data", "want"), cases(MESSAGE_FAKES))
def test_message_fake_count(data: bytes, want: int) -> None:
    got = inspect(data, BareNewline.NO, Framing.MESSAGE).findings.count(FAKE)
    assert got == want, f"got {got}, want {want}"
