"""The project stands alone: every citation resolves to a file in the repository.

Comments, docstrings, docs and snippets cite documents by path (`docs/explanation/smuggling.md`,
`bench/README.md`) or cite a primary source (an RFC section, a Postfix manual page). This test
reads the project's text files and fails on:
- the name of a document that is not part of the repository (the notes the project was started
  from: a design file and research notes kept beside the repository, never inside it);
- a path of the development machine (`/work/`, `/home/`, `/tmp/`) in docs, snippets, comments
  and docstrings; test code may still use temporary directories;
- a path under `docs/`, `filterd/`, `tests/`, `bench/`, `master.cf.d/` or `scripts/`, or a
  `*.md` name, that no file in the tree matches (a `*.md` name may be relative to the file).

In Python files only comments and docstrings are read for paths, since test code builds paths
that do not exist on purpose; the outside names and `/work/` are looked for everywhere.
"""

from __future__ import annotations

import ast
import io
import itertools
import re
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.smuggling_research import RESEARCH_BYTES
from tests.tables import cases

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("filterd", "tests", "bench", "master.cf.d", "docs", "scripts")
TOP_FILES = ("README.md", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".cf", ".toml", ".sh", ".txt", ".cfg", ".ini", ""}
SKIPPED_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}
# This module names the outside documents in order to find them.
SELF = Path(__file__).resolve()

# Documents that live outside the repository. "smuggling.md" is not here: the repository has
# its own (docs/explanation/smuggling.md), and a bare name is caught by the *.md rule below.
OUTSIDE = ("DESIGN.md", "peers.md", "ground-truth.md", "peers-bench.md", "../shared", "research/")
MACHINE_PATHS = ("/work/", "/home/", "/tmp/")  # noqa: S108 - names to look for, not a use
TREE_PATH = re.compile(
    r"(?<![\w./-])(?:docs|filterd|tests|bench|master\.cf\.d|scripts)/[\w./*{},-]*"
)
MD_NAME = re.compile(r"(?<![\w./:-])[\w./-]*\w\.md\b")


def expand_braces(path: str) -> list[str]:
    """`a/{b,c}/d` -> `a/b/d`, `a/c/d` (one level of braces, as the docs write them)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return list(
        itertools.chain.from_iterable(
            expand_braces(head + choice + tail) for choice in match.group(1).split(",")
        )
    )


def in_tree(path: str, base: Path = ROOT) -> bool:
    """Whether `path` (relative to `base`) names something there: every choice of its braces,
    and at least one match of a glob."""
    return all(_exists(choice, base) for choice in expand_braces(path))


def _exists(path: str, base: Path) -> bool:
    if any(ch in path for ch in "*?["):
        return next(base.glob(path.rstrip("/")), None) is not None
    return (base / path).exists()


def outside_names(line: str) -> list[str]:
    return [f"cites {name!r}, which is not in the repository" for name in OUTSIDE if name in line]


def machine_paths(line: str, prefixes: tuple[str, ...] = MACHINE_PATHS) -> list[str]:
    return [f"names the machine path {prefix!r}" for prefix in prefixes if prefix in line]


def missing_paths(line: str, exists: Callable[[str], bool]) -> list[str]:
    cited = {m.group(0).rstrip(".,:;)`'\"") for m in TREE_PATH.finditer(line)}
    cited |= {m.group(0) for m in MD_NAME.finditer(line)}
    cited = {path for path in cited if not any(name in path for name in OUTSIDE)}
    return [f"cites {path!r}, which does not exist" for path in sorted(cited) if not exists(path)]


def problems(line: str, exists: Callable[[str], bool]) -> list[str]:
    """What is wrong with one line of prose; `exists` says whether a cited path exists."""
    return outside_names(line) + machine_paths(line) + missing_paths(line, exists)


def project_files() -> Iterator[Path]:
    for top in TOP_FILES:
        yield ROOT / top
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if SKIPPED_DIRS.intersection(path.parts) or not path.is_file():
                continue
            if path.suffix in TEXT_SUFFIXES and path != SELF:
                yield path


def python_prose(text: str) -> Iterator[tuple[int, str]]:
    """The comment and docstring lines of a Python source, with their line numbers."""
    lines = text.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = _docstring(node)
            if docstring is not None and docstring.end_lineno is not None:
                for number in range(docstring.lineno, docstring.end_lineno + 1):
                    yield number, lines[number - 1]


def _docstring(
    node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef,
) -> ast.expr | None:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        return first.value if isinstance(first.value.value, str) else None
    return None


def text_problems(text: str, *, python: bool, exists: Callable[[str], bool]) -> list[str]:
    """Every problem of one file's text, once each, as "LINE: problem"."""
    return list(dict.fromkeys(_text_problems(text, python=python, exists=exists)))


def _text_problems(text: str, *, python: bool, exists: Callable[[str], bool]) -> Iterator[str]:
    if not python:
        for number, line in enumerate(text.splitlines(), 1):
            yield from (f"{number}: {p}" for p in problems(line, exists))
        return
    # Code may build any path (test code uses temporary directories); it may not name the
    # outside documents or the development machine's tree.
    for number, line in enumerate(text.splitlines(), 1):
        found = outside_names(line) + machine_paths(line, ("/work/",))
        yield from (f"{number}: {p}" for p in found)
    for number, line in python_prose(text):
        yield from (f"{number}: {p}" for p in problems(line, exists))


def file_problems(path: Path) -> Iterator[str]:
    def exists(cited: str) -> bool:
        return in_tree(cited) or (cited.endswith(".md") and in_tree(cited, path.parent))

    text = path.read_text(encoding="utf-8")
    where = path.relative_to(ROOT)
    for problem in text_problems(text, python=path.suffix == ".py", exists=exists):
        yield f"{where}:{problem}"


def test_every_citation_resolves_inside_the_repository() -> None:
    found = sorted({problem for path in project_files() for problem in file_problems(path)})
    assert found == []


FAKE_TREE = {"docs/explanation/smuggling.md", "docs/explanation/design.md", "filterd/core/"}
FAKE_TREE |= {"tests/core/test_a.py"}

# (id, a line of prose, what the check must say about it: "" when nothing)
CASES = [
    ("repo-doc", "# docs/explanation/smuggling.md has the table", ""),
    ("rfc", "# RFC 5321 §4.1.1.4; Postfix: smtpd_forbid_bare_newline", ""),
    ("postfix-readme", "relayed as SMTPD_PROXY_README says (postconf(5))", ""),
    ("folder", "lives in filterd/core/, beside it", ""),
    ("glob", "see `tests/core/test_*.py`.", ""),
    ("braces", "see docs/explanation/{smuggling,design}.md", ""),
    ("braces-missing", "see docs/explanation/{smuggling,gone}.md", "which does not exist"),
    ("design", "# a short queue collapses (DESIGN.md §7)", "'DESIGN.md', which is not in"),
    ("peers", "drops the connection (peers.md §3.1)", "'peers.md', which is not in"),
    ("research", '"""The bytes of research/smuggling.md §3.1."""', "'research/', which is not"),
    ("shared", "see ../shared/notes", "'../shared', which is not in the repository"),
    ("bench-notes", "figures from peers-bench.md", "'peers-bench.md', which is not in"),
    ("ground-truth", "as ground-truth.md measured", "'ground-truth.md', which is not in"),
    ("bare-smuggling", "# smuggling.md §3.1 (E09, E10)", "'smuggling.md', which does not exist"),
    ("missing-module", "see filterd/core/gone.py", "'filterd/core/gone.py', which does not exist"),
    ("missing-doc", "docs/how-to/gone.md says how", "'docs/how-to/gone.md', which does not"),
    ("work-path", "copied from /work/shared/x", "machine path '/work/'"),
    ("home-path", "run /home/me/filterd", "machine path '/home/'"),
    ("tmp-path", "config /tmp/demo/etc", "machine path '/tmp/'"),
    ("url", "https://example.org/notes/smuggling.md", ""),
    ("sentence-end", "as bench/README.md.", "'bench/README.md', which does not exist"),
]


def fake_exists(path: str) -> bool:
    return all(
        any(Path(name).match(choice) for name in FAKE_TREE)
        if "*" in choice
        else choice in FAKE_TREE
        for choice in expand_braces(path)
    )


@pytest.mark.parametrize(("line", "want"), cases(CASES))
def test_problems(line: str, want: str) -> None:
    got = problems(line, fake_exists)
    if want:
        assert any(want in problem for problem in got), got
    else:
        assert got == []


PYTHON_SOURCE = '''"""Module docstring: see docs/gone.md."""
WORK = Path("/tmp/x")  # a comment naming /tmp/y
DATA = "tests/not-there.py"
NOTES = "peers.md"


def f() -> None:
    """A docstring citing DESIGN.md §7."""
    return "/work/x"
'''


def test_python_code_is_read_for_outside_names_and_prose_for_everything() -> None:
    got = sorted(text_problems(PYTHON_SOURCE, python=True, exists=fake_exists))
    assert got == [
        "1: cites 'docs/gone.md', which does not exist",
        "2: names the machine path '/tmp/'",
        "4: cites 'peers.md', which is not in the repository",
        "8: cites 'DESIGN.md', which is not in the repository",
        "9: names the machine path '/work/'",
    ]


def test_the_threat_model_lists_the_bytes_the_tests_cite() -> None:
    """tests/smuggling_research.py cites the byte table of docs/explanation/smuggling.md."""
    page = (ROOT / "docs" / "explanation" / "smuggling.md").read_text(encoding="utf-8")
    row = re.compile(r"^\| ([EC]\d\d) \| `([^`]*)` \|", re.MULTILINE)
    got = {
        m.group(1): m.group(2).encode().decode("unicode_escape").encode("latin-1")
        for m in row.finditer(page)
    }
    assert got == RESEARCH_BYTES
