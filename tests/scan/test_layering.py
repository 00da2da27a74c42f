"""The scan package reports facts: it must not reach into the core or the endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

import filterd.scan
from tests.layering import imported_modules, inside

FORBIDDEN = ("filterd.core", "filterd.endpoints", "filterd.pipeline", "filterd.app")


def offending(path: Path) -> list[str]:
    return [name for name in imported_modules(path.read_text()) if inside(name, FORBIDDEN)]


@pytest.mark.parametrize(
    "source",
    [
        "import filterd.core",
        "from filterd.core import verdict",
        "from filterd import core",
        "from filterd import endpoints",
        "from filterd.endpoints.proxy import session",
        "from filterd import pipeline",
    ],
)
def test_the_rule_sees_an_offending_import(tmp_path: Path, source: str) -> None:
    module = tmp_path / "bad.py"
    module.write_text(source + "\n")
    assert offending(module), source


def test_the_rule_lets_the_shared_address_parser_in(tmp_path: Path) -> None:
    module = tmp_path / "good.py"
    module.write_text("from filterd import address\nfrom filterd.address import HostPort\n")
    assert offending(module) == []


def test_scan_does_not_import_core_or_endpoints() -> None:
    package = Path(filterd.scan.__file__).parent
    found = {f"{path.name}: {name}" for path in package.rglob("*.py") for name in offending(path)}
    assert not found
