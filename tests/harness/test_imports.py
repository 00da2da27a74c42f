"""The harness is an independent judge of filterd: it must not import filterd's core, its
scanner, its endpoints or its pipeline (issue 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

import filterd.harness
from tests.layering import imported_modules, inside

HARNESS = Path(filterd.harness.__file__).parent
FORBIDDEN = ("filterd.core", "filterd.scan", "filterd.endpoints", "filterd.pipeline")


def forbidden_imports(source: str) -> list[str]:
    return [name for name in imported_modules(source) if inside(name, FORBIDDEN)]


@pytest.mark.parametrize(
    "line",
    [
        "import filterd.core.events",
        "from filterd import scan",
        "from filterd.endpoints.proxy.endpoint import x",
        "from filterd.pipeline import run",
        "import filterd.core as c",
    ],
)
def test_the_checker_catches(line: str) -> None:
    assert forbidden_imports(line), f"not caught: {line}"


@pytest.mark.parametrize("line", ["import socket", "from filterd.harness import client"])
def test_the_checker_allows(line: str) -> None:
    assert forbidden_imports(line) == []


def test_harness_imports_nothing_from_the_core() -> None:
    files = sorted(HARNESS.rglob("*.py"))
    assert files, f"no Python files under {HARNESS}"
    offenders = {
        str(path.relative_to(HARNESS)): found
        for path in files
        if (found := forbidden_imports(path.read_text()))
    }
    assert offenders == {}, f"forbidden imports in filterd/harness: {offenders}"
