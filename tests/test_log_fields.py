"""docs/reference/log-fields.md stays in step with the code.

The `message` line's fields are documented by hand (their meaning needs words) and checked
against `MessageRecord.fields()` here and against a real run's lines in
tests/integration/test_observability.py; the table of every other event is generated from
the log calls in the source. Regenerate with: .venv/bin/python -m tests.test_log_fields
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from filterd.core import MessageRecord
from filterd.core import verdict as v
from tests.test_docs import check_generated, replace_between

ROOT = Path(__file__).parent.parent
PAGE = ROOT / "docs" / "reference" / "log-fields.md"
BEGIN, END = "<!-- events:begin -->", "<!-- events:end -->"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# The endpoints' own fields on the message line (MessageRecord.own, in
# filterd/endpoints/proxy/session.py `finish` and filterd/endpoints/milter/session.py).
ENDPOINT_FIELDS = {"answer", "session", "client_name", "refused_recipients"}
# Fields of every line (filterd/logs.py processors); `worker` with [server] workers > 1
# (bound by filterd/workers/supervisor.py in each worker).
COMMON_FIELDS = {"event", "level", "logger", "timestamp", "exception", "worker"}
_ROW = re.compile(r"^\| `(\w+)` \|")


@dataclass(frozen=True, order=True)
class Event:
    event: str
    level: str
    module: str
    fields: tuple[str, ...]


def events(root: Path = ROOT / "filterd") -> list[Event]:
    """Every `_log.LEVEL("literal", key=...)` and `Throttled(_log, "literal")` in filterd/,
    the harness and the doctor aside (they print reports, they do not log)."""
    found: set[Event] = set()
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module.startswith(("filterd.harness", "filterd.doctor")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            event = _event_of(node, module)
            if event is not None:
                found.add(event)
            if isinstance(node, ast.Call) and node.args:
                found.update(_proxy_session_whats(node))
    return sorted(found)


def _event_of(node: ast.AST, module: str) -> Event | None:
    if not isinstance(node, ast.Call) or not node.args:
        return None
    first = node.args[0]
    func = node.func
    extra: tuple[str, ...] = ()
    if _proxy_session_whats(node):
        return None
    if isinstance(func, ast.Name) and func.id == "Throttled" and len(node.args) > 1:
        first, level, extra = node.args[1], "warning", ("count",)
    elif isinstance(func, ast.Attribute) and func.attr in LEVELS and _is_logger(func.value):
        level = "error" if func.attr == "exception" else func.attr
        if func.attr == "exception":
            extra = ("exception",)
    else:
        return None
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    # The canonical line has its own table; `proxy session` one row per `what`.
    if (first.value, module) == ("message", "filterd.pipeline") or first.value == "proxy session":
        return None
    keys = tuple(
        sorted({k.arg for k in node.keywords if k.arg and k.arg != "exc_info"} | set(extra))
    )
    return Event(first.value, level, module, keys)


def _proxy_session_whats(node: ast.Call) -> list[Event]:
    """`self.event("what", key=...)` in the proxy, `Note("what", {"key": ...})` in the SMTP
    machine: both become `proxy session` lines with `what` and the keys."""
    func, first = node.func, node.args[0]
    if isinstance(func, ast.Attribute) and func.attr == "event" and _is_self(func.value):
        keys = {k.arg for k in node.keywords if k.arg}
    elif isinstance(func, ast.Name) and func.id == "Note":
        table = node.args[1] if len(node.args) > 1 else None
        keys = {str(k.value) for k in getattr(table, "keys", []) if isinstance(k, ast.Constant)}
    else:
        return []
    # `self.event("evicted" if ... else "timeout")`: both words
    words = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
    return [
        Event("proxy session", "info", "filterd.endpoints.proxy.session",
              tuple(sorted({"peer", "session", f"what={word.value}"} | keys)))
        for word in words
        if isinstance(word, ast.Constant) and isinstance(word.value, str)
    ]  # fmt: skip


def _is_self(value: ast.expr) -> bool:
    return isinstance(value, ast.Name) and value.id == "self"


def _is_logger(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id in {"_log", "log"}
    return isinstance(value, ast.Call) and getattr(value.func, "id", "") == "get_logger"


def render_events() -> str:
    rows = ["| event | level | logger module | fields |", "|---|---|---|---|"]
    for e in events():
        fields = ", ".join(f"`{name}`" for name in e.fields) or "—"
        rows.append(f"| `{e.event}` | {e.level} | `{e.module}` | {fields} |")
    return "\n".join(rows)


def render_page(text: str) -> str:
    return replace_between(text, render_events(), BEGIN, END)


def documented(section: str) -> set[str]:
    """The field names in the first column of the table under `## section`."""
    text = PAGE.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m[1] for line in text.splitlines() if (m := _ROW.match(line))}


def record_fields() -> set[str]:
    """Every key MessageRecord.fields() can write: a record with every fact set."""
    record = MessageRecord(
        "proxy", v.REJECT_VIRUS, client="c", sender="s", recipients=1, size=1, bypass="b",
        trace="t", trace_line=1, findings=("f",), scan_time=0.1, virus="x", scan_error="e",
        clamd="unix:/c", elapsed=0.1, error="e", queue_id="q", downstream_reply="r",
        final_dot_sent=True,
    )  # fmt: skip
    return set(record.fields())


def test_every_message_field_is_documented() -> None:
    assert documented("The message line") == record_fields() | ENDPOINT_FIELDS


def test_common_fields_are_documented() -> None:
    assert documented("Fields of every line") == COMMON_FIELDS


def test_events_table_matches_the_source() -> None:
    check_generated(PAGE, render_page, "tests.test_log_fields")


def test_the_scanner_of_the_events_finds_known_events() -> None:
    """Guards the AST walk itself: it must find events of each kind of call."""
    names = {(e.event, e.level) for e in events()}
    assert ("listening", "info") in names
    assert ("too many connections; answering new ones 421", "warning") in names
    assert ("message processing failed; answering with a tempfail", "error") in names
    assert ("syslog socket not reachable; logging to stderr as well", "warning") in names
    whats = {f for e in events() if e.event == "proxy session" for f in e.fields}
    assert {"what=pipelining", "what=timeout", "what=downstream_failed"} <= whats


if __name__ == "__main__":
    PAGE.write_text(render_page(PAGE.read_text()))
