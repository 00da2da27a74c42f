"""Reference pages generated from the code stay in step with it.

Regenerate with: .venv/bin/python -m tests.test_docs (the SMTP state page, too)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path

from filterd import config
from filterd.core import verdict as v

REPO = Path(__file__).parent.parent
DOCS = REPO / "docs" / "reference"
VERDICTS_PAGE = DOCS / "verdicts.md"
CONFIG_PAGE = DOCS / "configuration.md"
BEGIN, END = "<!-- verdicts:begin -->", "<!-- verdicts:end -->"
# A settings field in the source: `name: type = default  # comment`.
FIELD = re.compile(r"^ {4}(\w+): [^=]+= (.+?)(?:  # (.*))?$")


def render_verdicts() -> str:
    names = {id(value): name for name, value in vars(v).items() if isinstance(value, v.Verdict)}
    rows = ["| name | action | reply | reason |", "|---|---|---|---|"]
    for verdict in v.CATALOGUE:
        reply = verdict.reply + (": NAME" if verdict.text == "Virus found" else "")
        row = f"| `{names[id(verdict)]}` | {verdict.action} | `{reply}` | `{verdict.reason}` |"
        rows.append(row)
    return "\n".join(rows)


def field_notes(cls: type) -> dict[str, str]:
    """The comment beside (or on the lines just above) each field of a settings class."""
    notes: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = FIELD.match(line)
        if match:
            notes[match[1]] = " ".join([*above, match[3] or ""]).strip()
        above = []
    return notes


def _toml(value: object) -> str:
    """A default as it is written in filterd.toml where that differs from str()."""
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def render_configuration() -> str:
    parts = []
    defaults = config.Config()
    for section in dataclasses.fields(defaults):
        instance = getattr(defaults, section.name)
        notes = field_notes(type(instance))
        rows = [f"### [{section.name}]", "", "| key | default | meaning |", "|---|---|---|"]
        for item in dataclasses.fields(instance):
            default = getattr(instance, item.name)
            shown = f"`{_toml(default)}`" if default != "" else '`""`'
            note = notes.get(item.name, "").replace("|", "\\|")
            rows.append(f"| `{item.name}` | {shown} | {note} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def replace_between(text: str, body: str, begin: str = BEGIN, end: str = END) -> str:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def check_generated(page: Path, render: Callable[[str], str], module: str) -> None:
    """`page` is what `render` makes of it now; if not, say which module regenerates it."""
    text = page.read_text()
    assert render(text) == text, (
        f"{page.relative_to(REPO)} is out of date: run .venv/bin/python -m {module}"
    )


def render_verdicts_page(text: str) -> str:
    return replace_between(text, render_verdicts())


def test_verdicts_page_matches_the_catalogue() -> None:
    check_generated(VERDICTS_PAGE, render_verdicts_page, "tests.test_docs")


CONFIG_BEGIN, CONFIG_END = "<!-- config:begin -->", "<!-- config:end -->"


def render_configuration_page(text: str) -> str:
    return replace_between(text, render_configuration(), CONFIG_BEGIN, CONFIG_END)


def test_configuration_page_matches_the_settings() -> None:
    check_generated(CONFIG_PAGE, render_configuration_page, "tests.test_docs")


if __name__ == "__main__":
    from tests.core import test_smtp_machine

    VERDICTS_PAGE.write_text(render_verdicts_page(VERDICTS_PAGE.read_text()))
    CONFIG_PAGE.write_text(render_configuration_page(CONFIG_PAGE.read_text()))
    machine_page = test_smtp_machine.PAGE
    machine_page.write_text(test_smtp_machine.render_page(machine_page.read_text()))
