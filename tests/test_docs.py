"""Reference pages generated from the code stay in step with it.

Regenerate with: .venv/bin/python -m tests.test_docs
"""

from __future__ import annotations

from pathlib import Path

from filterd.core import verdict as v

VERDICTS_PAGE = Path(__file__).parent.parent / "docs" / "reference" / "verdicts.md"
BEGIN, END = "<!-- verdicts:begin -->", "<!-- verdicts:end -->"


def render_verdicts() -> str:
    names = {id(value): name for name, value in vars(v).items() if isinstance(value, v.Verdict)}
    rows = ["| name | action | reply | reason |", "|---|---|---|---|"]
    for verdict in v.CATALOGUE:
        reply = verdict.reply + (": NAME" if verdict.text == "Virus found" else "")
        row = f"| `{names[id(verdict)]}` | {verdict.action} | `{reply}` | `{verdict.reason}` |"
        rows.append(row)
    return "\n".join(rows)


def replace_between(text: str, body: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def test_verdicts_page_matches_the_catalogue() -> None:
    text = VERDICTS_PAGE.read_text()
    assert replace_between(text, render_verdicts()) == text, (
        "docs/reference/verdicts.md is out of date: run .venv/bin/python -m tests.test_docs"
    )


if __name__ == "__main__":
    VERDICTS_PAGE.write_text(replace_between(VERDICTS_PAGE.read_text(), render_verdicts()))
