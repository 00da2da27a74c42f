"""Which modules a Python source imports, for the tests that keep the packages apart."""

from __future__ import annotations

import ast


def imported_modules(source: str) -> list[str]:
    """Every module `source` imports, in order; `from a import b` also names `a.b`, since `b`
    may be a module (`from filterd import core` imports filterd.core)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def inside(name: str, packages: tuple[str, ...]) -> bool:
    """`name` is one of `packages` or a module inside one of them."""
    return any(name == package or name.startswith(package + ".") for package in packages)
