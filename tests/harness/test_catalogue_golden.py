"""The whole catalogue, every field of every probe, against tests/harness/catalogue.json: a
rewrite of catalogue.py that changes one probe's id, bytes, labels or order fails here.

After a deliberate change to a probe: `.venv/bin/python -m tests.harness.test_catalogue_golden`
rewrites the file; review its diff like code."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

from filterd.harness.catalogue import CATALOGUE, Probe

GOLDEN = Path(__file__).with_name("catalogue.json")


def field_text(value: object) -> object:
    """A field as JSON: bytes as their Python repr, enums as their value, steps as lists."""
    if isinstance(value, bytes):
        return repr(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [field_text(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: field_text(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def dump(probes: tuple[Probe, ...]) -> str:
    return json.dumps([field_text(probe) for probe in probes], indent=1) + "\n"


def test_catalogue_matches_the_golden_file() -> None:
    want = json.loads(GOLDEN.read_text())
    got = json.loads(dump(CATALOGUE))
    assert [p["id"] for p in got] == [p["id"] for p in want]
    for got_probe, want_probe in zip(got, want, strict=True):
        assert got_probe == want_probe, got_probe["id"]


def test_the_dump_tells_probes_apart() -> None:
    first, second = CATALOGUE[0], CATALOGUE[1]
    changed = dataclasses.replace(first, sequence=first.sequence + b"\r")
    assert dump((first,)) != dump((changed,))
    assert dump((first, second)) != dump((second, first))


if __name__ == "__main__":
    GOLDEN.write_text(dump(CATALOGUE))
