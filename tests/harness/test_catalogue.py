"""The catalogue holds every row of smuggling.md §3.1, §3.2 and P01-P08 of §3.3, with the
exact bytes of the research notes."""

from __future__ import annotations

import pytest

from filterd.harness.catalogue import (
    BDAT_CHUNK,
    BDAT_CHUNK_SIZE,
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

# smuggling.md §8.4 item 9: LF- and CR-based sequences reach the target through a relay.
EXPLOITABLE_IDS = {"E01", "E02", "E04", "E05", "E06", "E07", "E09", "E14", "E15", "E16", "E19"}

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


def test_catalogue_is_exactly_the_research_rows() -> None:
    assert set(BY_ID) == set(RESEARCH_BYTES) | set(PROTOCOL_IDS)


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


def test_bdat_size_matches_the_rendered_chunk() -> None:
    rendered = render(BY_ID["P02"].suffix, "P02", VALUES)
    chunk = render(BDAT_CHUNK, "P02", VALUES)
    assert rendered.endswith(b"bdat %d last\r\n" % BDAT_CHUNK_SIZE + chunk)
    assert len(chunk) == BDAT_CHUNK_SIZE


@pytest.mark.parametrize("probe", CATALOGUE, ids=lambda p: p.id)
def test_render_fills_every_placeholder(probe: object) -> None:
    parts = (getattr(probe, name) for name in ("prefix", "sequence", "suffix", "closer"))
    rendered = b"".join(render(part, getattr(probe, "id"), VALUES) for part in parts)  # noqa: B009
    left = [token for token in PLACEHOLDERS if token.encode() in rendered]
    assert left == []


@pytest.mark.parametrize(
    ("probe_id", "requires"), [("P02", "CHUNKING"), ("P08", "STARTTLS"), ("E02", None)]
)
def test_requirements(probe_id: str, requires: str | None) -> None:
    assert BY_ID[probe_id].requires == requires
