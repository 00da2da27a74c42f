"""README.md states facts of the package that must follow pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

TOP = Path(__file__).parent.parent
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def test_the_runtime_dependencies_named_are_pyprojects() -> None:
    text = " ".join((TOP / "README.md").read_text().split())
    match = re.search(r"with (\w+) runtime dependencies \(([^)]*)\)", text)
    assert match is not None, "README.md names its runtime dependencies"
    named = [name.strip() for name in match[2].replace(" and ", ", ").split(",")]
    project = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]
    wanted = [re.split(r"[<>=!~ \[]", line, maxsplit=1)[0] for line in project["dependencies"]]
    got = (NUMBERS.get(match[1]), sorted(named))
    assert got == (len(wanted), sorted(wanted))
