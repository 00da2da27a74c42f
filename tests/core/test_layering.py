"""filterd.core stays sans-I/O: no asyncio, sockets, logging or protocol libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import filterd.core

CORE = Path(filterd.core.__file__).parent
FORBIDDEN = {
    "asyncio", "socket", "ssl", "selectors", "logging", "structlog", "threading",
    "subprocess", "aiosmtpd", "purepythonmilter", "clamd", "smtplib",
}  # fmt: skip
ALLOWED_FILTERD = "filterd.core"


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_core_imports_nothing_with_io() -> None:
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                bad.append(f"{path.name}: {name}")
            elif top == "filterd" and not name.startswith(ALLOWED_FILTERD):
                bad.append(f"{path.name}: {name} (the core imports only itself)")
    assert not bad, f"forbidden imports in filterd.core: {bad}"


def test_walker_sees_imports(tmp_path: Path) -> None:
    # The walker must catch both import forms, or the test above could never fail.
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom socket import socket\n")
    assert imported_modules(sample) == ["asyncio", "socket"]


def test_importing_core_loads_no_asyncio() -> None:
    code = "import sys, filterd.core; print('asyncio' in sys.modules)"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "False", "importing filterd.core imported asyncio"
