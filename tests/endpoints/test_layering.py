"""The two endpoint packages never import each other; both may use filterd.endpoints.net."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENDPOINTS = Path(__file__).resolve().parents[2] / "filterd" / "endpoints"


def imported_modules(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(("package", "other"), [("proxy", "milter"), ("milter", "proxy")])
def test_an_endpoint_package_never_imports_the_other(package: str, other: str) -> None:
    modules = sorted((ENDPOINTS / package).glob("*.py"))
    assert modules, f"no modules in filterd/endpoints/{package}"
    forbidden = f"filterd.endpoints.{other}"
    offenders = [
        f"{path.name}: {name}"
        for path in modules
        for name in imported_modules(path)
        if name == forbidden or name.startswith(forbidden + ".")
    ]
    assert offenders == []


def test_the_rule_sees_an_offending_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from filterd.endpoints.milter import session\n")
    assert "filterd.endpoints.milter.session" in imported_modules(module)
