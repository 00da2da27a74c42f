"""The package as a mail server gets it: a wheel with runtime dependencies only, whose
`filterd` command runs from a fresh virtual environment.

Offline: the wheel is built with the test environment's setuptools (--no-build-isolation)
from a copy of the package, and installed without its dependencies (--no-deps --no-index);
the fresh environment borrows them from the test environment on PYTHONPATH (a plain
directory there does not run the editable install's .pth, so filterd itself comes from the
wheel, which the test checks).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

TOP = Path(__file__).parent.parent
TEST_TOOLS = {"pytest", "pytest-asyncio", "hypothesis", "mypy", "ruff", "setuptools", "wheel"}


def run(
    *command: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True, text=True, timeout=120, check=True, env=env, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(TOP / name, source)
    shutil.copytree(
        TOP / "filterd", source / "filterd", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = source / "dist"
    pip = (sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation")
    run(*pip, "--no-index", "-w", dist, source)
    (found,) = dist.glob("filterd-*.whl")
    return found


def requirement_names(lines: list[str]) -> set[str]:
    return {line.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
            for line in lines}  # fmt: skip


def test_wheel_lists_runtime_dependencies_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(metadata).decode())
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    runtime = [r for r in message.get_all("Requires-Dist") or [] if "extra ==" not in r]
    project = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]
    assert requirement_names(runtime) == requirement_names(project["dependencies"])
    assert not requirement_names(runtime) & TEST_TOOLS
    assert "filterd = filterd.cli:main" in scripts


def test_the_installed_command_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python, "install", "-q")
    run(*pip, "--no-deps", "--no-index", wheel)
    borrowed = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"}
    where = run(python, "-c", "import filterd; print(filterd.__file__)", env=borrowed, cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), f"filterd imported from {where.stdout}"
    version = run(venv / "bin" / "filterd", "--version", env=borrowed, cwd=tmp_path)
    assert version.stdout.startswith("filterd ")
    config = tmp_path / "filterd.toml"
    config.write_text('[proxy]\nlisten = "127.0.0.1:10024"\n')
    checked = run(
        venv / "bin" / "filterd", "check-config", "--config", config, env=borrowed, cwd=tmp_path
    )
    assert checked.stdout.strip() == f"filterd check-config: {config}: OK"
