"""The scan package reports facts: it must not reach into the core or the endpoints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import filterd.scan

FORBIDDEN = ("filterd.core", "filterd.endpoints", "filterd.pipeline", "filterd.app")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            # `from filterd import core` imports filterd.core without naming it as a module.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


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
    assert any(name.startswith(FORBIDDEN) for name in imported_modules(module)), source


def test_the_rule_lets_the_shared_address_parser_in(tmp_path: Path) -> None:
    module = tmp_path / "good.py"
    module.write_text("from filterd import address\nfrom filterd.address import HostPort\n")
    assert not any(name.startswith(FORBIDDEN) for name in imported_modules(module))


def test_scan_does_not_import_core_or_endpoints() -> None:
    package = Path(filterd.scan.__file__).parent
    found = {
        f"{path.name}: {name}"
        for path in package.rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN)
    }
    assert not found
