"""The scan package reports facts: it must not reach into the core or the endpoints."""

from __future__ import annotations

import ast
from pathlib import Path

import filterd.scan

FORBIDDEN = ("filterd.core", "filterd.endpoints", "filterd.pipeline", "filterd.app")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def test_scan_does_not_import_core_or_endpoints() -> None:
    package = Path(filterd.scan.__file__).parent
    found = {
        f"{path.name}: {name}"
        for path in package.rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN)
    }
    assert not found
