"""ScanResult keeps its fields consistent with its status."""

from __future__ import annotations

import dataclasses

import pytest

from filterd.scan.result import ScanResult, ScanStatus


def test_constructors() -> None:
    assert ScanResult.clean(0.5) == ScanResult(ScanStatus.CLEAN, elapsed=0.5)
    assert ScanResult.infected("Fake.Virus").virus == "Fake.Virus"
    assert ScanResult.error("scanner busy").reason == "scanner busy"
    assert ScanResult.oversize("too big").status is ScanStatus.OVERSIZE


def test_is_frozen() -> None:
    result = ScanResult.clean()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = ScanStatus.INFECTED  # type: ignore[misc]


@pytest.mark.parametrize(
    ("status", "virus", "reason"),
    [
        pytest.param(ScanStatus.CLEAN, "Fake.Virus", None, id="clean-with-virus"),
        pytest.param(ScanStatus.CLEAN, None, "why", id="clean-with-reason"),
        pytest.param(ScanStatus.INFECTED, None, None, id="infected-without-virus"),
        pytest.param(ScanStatus.ERROR, None, None, id="error-without-reason"),
        pytest.param(ScanStatus.OVERSIZE, None, None, id="oversize-without-reason"),
        pytest.param(ScanStatus.ERROR, None, "two\nlines", id="reason-not-one-line"),
        pytest.param(ScanStatus.ERROR, None, "caf\u00e9", id="reason-not-ascii"),
        pytest.param(ScanStatus.ERROR, None, "x" * 201, id="reason-too-long"),
        pytest.param(ScanStatus.INFECTED, "", None, id="virus-empty"),
    ],
)
def test_inconsistent_fields_are_refused(
    status: ScanStatus, virus: str | None, reason: str | None
) -> None:
    with pytest.raises(ValueError, match=r"virus|reason|ASCII"):
        ScanResult(status, virus=virus, reason=reason)
