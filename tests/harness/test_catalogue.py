"""The catalogue holds every fake terminator and control of tests/smuggling_research.py with its
exact bytes, the protocol probes P01-P08, and the four variant forms of every exploitable
sequence."""

from __future__ import annotations

import re

import pytest

from filterd.harness.catalogue import (
    BY_ID,
    CATALOGUE,
    PLACEHOLDERS,
    STANDARD_EOD,
    Kind,
    Rule,
    Stage,
    Values,
    render,
)
from tests.smuggling_research import RESEARCH_BYTES

PROTOCOL_IDS = [f"P0{n}" for n in range(1, 9)]

# LF- and CR-based sequences reach the target through a relay that dot-stuffs correctly.
EXPLOITABLE_IDS = {"E01", "E02", "E04", "E05", "E06", "E07", "E09", "E14", "E15", "E16", "E19"}
# E02's BDAT form keeps its published id, P02.
VARIANT_IDS = {f"{base}-{form}" for base in EXPLOITABLE_IDS for form in ("B", "L", "LB", "S")} - {
    "E02-B"
}
BDAT_COMMAND = re.compile(rb"bdat (\d+) last\r\n")

VALUES = Values(
    sender="from@example.test",
    recipient="to@example.test",
    smuggled_sender="smuggled@example.test",
    helo="client.example.test",
    run="abcd1234",
)


def test_ids_are_unique() -> None:
    ids = [probe.id for probe in CATALOGUE]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("probe_id", sorted(RESEARCH_BYTES))
def test_research_row_has_its_exact_bytes(probe_id: str) -> None:
    assert probe_id in BY_ID, f"{probe_id} missing from the catalogue"
    got, want = BY_ID[probe_id].sequence, RESEARCH_BYTES[probe_id]
    assert got == want, f"{probe_id}: got {got!r}, want {want!r}"


@pytest.mark.parametrize("probe_id", PROTOCOL_IDS)
def test_protocol_row_is_present(probe_id: str) -> None:
    assert probe_id in BY_ID


def test_catalogue_is_exactly_the_research_rows_and_their_variants() -> None:
    assert set(BY_ID) == set(RESEARCH_BYTES) | set(PROTOCOL_IDS) | VARIANT_IDS


@pytest.mark.parametrize("probe_id", sorted(VARIANT_IDS))
def test_variant_keeps_its_sequence_and_kind(probe_id: str) -> None:
    base, form = probe_id.split("-")
    probe = BY_ID[probe_id]
    assert probe.sequence == BY_ID[base].sequence
    assert probe.kind is Kind.EXPLOITABLE
    assert probe.rule is Rule.SMUGGLE
    assert probe.requires == ("CHUNKING" if "B" in form else None)


def rendered(probe_id: str, part: str) -> bytes:
    return render(getattr(BY_ID[probe_id], part), probe_id, VALUES)


@pytest.mark.parametrize("probe_id", sorted(i for i in VARIANT_IDS if "-L" in i))
def test_lf_carrier_lines_end_in_bare_lf(probe_id: str) -> None:
    carrier = rendered(probe_id, "prefix")
    assert b"\r" not in carrier, carrier
    assert carrier.count(b"\n") >= 5  # four header lines and the blank line


@pytest.mark.parametrize("probe_id", sorted(i for i in VARIANT_IDS if i.endswith("-S")))
def test_split_write_holds_back_every_smuggled_command(probe_id: str) -> None:
    probe = BY_ID[probe_id]
    first = rendered(probe_id, "prefix") + probe.sequence + rendered(probe_id, "suffix")
    assert b"mail from" not in first.lower()
    # The first write ends with the line the sequence completes: nothing waits after it.
    assert first.endswith(b"\n"), first[-8:]
    parts = [render(part, probe_id, VALUES) for part in probe.delayed]
    assert [part.split(b":")[0] for part in parts[:3]] == [b"mail FROM", b"rcpt TO", b"data\r\n"]
    assert f"filterd-smuggle abcd1234 {probe_id} smuggled".encode() in parts[3]


@pytest.mark.parametrize("probe", CATALOGUE, ids=lambda p: p.id)
def test_only_smuggling_probes_label_a_message_smuggled(probe: object) -> None:
    """--sink upgrades a probe whose "smuggled" message arrives; a control or protocol probe
    sends only ordinary messages, so it must never carry that label."""
    probe_id = getattr(probe, "id")  # noqa: B009
    names = ("prefix", "sequence", "suffix", "closer")
    parts = [getattr(probe, name) for name in names] + list(getattr(probe, "delayed"))  # noqa: B009
    text = b"".join(render(part, probe_id, VALUES) for part in parts)
    labelled = f"filterd-smuggle abcd1234 {probe_id} smuggled".encode() in text
    assert labelled is (getattr(probe, "rule") is Rule.SMUGGLE), getattr(probe, "id")  # noqa: B009


@pytest.mark.parametrize("probe", CATALOGUE, ids=lambda p: p.id)
def test_every_probe_names_source_and_target(probe: object) -> None:
    assert getattr(probe, "source", ""), "source is empty"
    assert getattr(probe, "target", ""), "target is empty"


@pytest.mark.parametrize("probe_id", sorted(i for i in RESEARCH_BYTES if i.startswith("E")))
def test_terminator_kind_follows_dot_stuffing(probe_id: str) -> None:
    want = Kind.EXPLOITABLE if probe_id in EXPLOITABLE_IDS else Kind.HYGIENE
    assert BY_ID[probe_id].kind is want, f"{probe_id}: got {BY_ID[probe_id].kind}, want {want}"


@pytest.mark.parametrize("probe_id", sorted(i for i in RESEARCH_BYTES if i.startswith("E")))
def test_hygiene_rows_are_dot_stuffed_or_hold_a_real_terminator(probe_id: str) -> None:
    probe = BY_ID[probe_id]
    if probe.kind is not Kind.HYGIENE:
        return
    # A compliant relay doubles the dot of a "<CRLF>.<not CRLF>" line (RFC 5321 §4.5.2).
    tail = probe.sequence + render(probe.suffix, probe.id, VALUES)
    dot_line = b"\r\n." in tail and not tail.startswith(b"\r\n.\r\n", tail.index(b"\r\n."))
    assert dot_line or STANDARD_EOD in probe.sequence, repr(probe.sequence)


def test_smuggle_probes_write_in_data_and_close_with_the_standard_terminator() -> None:
    for probe in CATALOGUE:
        if probe.rule is Rule.SMUGGLE:
            assert probe.stage is Stage.IN_DATA, probe.id
            assert probe.closer == STANDARD_EOD, probe.id


@pytest.mark.parametrize("probe_id", ["P02", *sorted(i for i in VARIANT_IDS if "B" in i)])
def test_bdat_size_matches_the_rendered_chunk(probe_id: str) -> None:
    suffix = rendered(probe_id, "suffix")
    match = BDAT_COMMAND.search(suffix)
    assert match is not None, suffix
    chunk = suffix[match.end() :]
    assert len(chunk) == int(match.group(1)), chunk
    assert f"filterd-smuggle abcd1234 {probe_id} smuggled".encode() in chunk


@pytest.mark.parametrize("probe", CATALOGUE, ids=lambda p: p.id)
def test_render_fills_every_placeholder(probe: object) -> None:
    names = ("prefix", "sequence", "suffix", "closer")
    parts = [getattr(probe, name) for name in names] + list(getattr(probe, "delayed"))  # noqa: B009
    text = b"".join(render(part, getattr(probe, "id"), VALUES) for part in parts)  # noqa: B009
    left = [token for token in PLACEHOLDERS if token.encode() in text]
    assert left == []


@pytest.mark.parametrize(
    ("probe_id", "requires"), [("P02", "CHUNKING"), ("P08", "STARTTLS"), ("E02", None)]
)
def test_requirements(probe_id: str, requires: str | None) -> None:
    assert BY_ID[probe_id].requires == requires
