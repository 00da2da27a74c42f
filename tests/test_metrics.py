"""filterd/metrics.py: counted from the message line, served over HTTP, documented.

The real-run scrape is in tests/integration/test_observability.py; here the HTTP endpoint,
the one-line errors and the reference page. Regenerate it: .venv/bin/python -m tests.test_metrics
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from filterd import metrics
from filterd.config import Config, ConfigError, MetricsSettings, from_mapping
from filterd.core import ContentBudget
from tests.tables import cases
from tests.test_docs import check_generated, replace_between
from tests.testbed.common import free_port

PAGE = Path(__file__).parent.parent / "docs" / "reference" / "metrics.md"
BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


class FakeEndpoint:
    def __init__(self, name: str, sessions: int, budget: ContentBudget) -> None:
        self.name = name
        self.sessions = dict.fromkeys(range(sessions))
        self.pipeline = type("P", (), {"budget": budget})()


def render_metrics() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in metrics.DOCUMENTED:
        labels = ", ".join(f"`{name}`" for name in metric.labels) or "—"
        rows.append(f"| `{metric.name}` | {metric.kind} | {labels} | {metric.help} |")
    return "\n".join(rows)


def render_page(text: str) -> str:
    return replace_between(text, render_metrics(), BEGIN, END)


def test_reference_page_matches_the_metrics() -> None:
    check_generated(PAGE, render_page, "tests.test_metrics")


def test_documented_metrics_are_the_exposed_ones() -> None:
    registry = CollectorRegistry()
    budget = ContentBudget(1000)
    running = metrics.start_metrics(MetricsSettings(), [FakeEndpoint("proxy", 0, budget)], registry)
    try:
        read = {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}
    finally:
        running.stop()
    counted = {m.name for m in metrics.DOCUMENTED if m.kind != "gauge"}
    assert {m.name for m in metrics.DOCUMENTED} == read | counted
    assert read == {
        "filterd_sessions_open",
        "filterd_content_budget_bytes",
        "filterd_clamd_slots",
        "filterd_clamd_queued",
        "filterd_clamd_healthy",
        "filterd_clamd_scans_total",
        "filterd_clamd_errors_total",
    }


def test_scrape_over_http_reads_the_gauges() -> None:
    registry = CollectorRegistry()
    budget = ContentBudget(1000)
    assert budget.reserve(300)
    endpoints = [FakeEndpoint("proxy", 2, budget), FakeEndpoint("milter inet:x:1", 1, budget)]
    port = free_port()
    running = metrics.start_metrics(MetricsSettings(f"127.0.0.1:{port}"), endpoints, registry)
    try:
        assert running.port == port
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        running.stop()
    assert 'filterd_sessions_open{endpoint="proxy"} 2.0' in text
    assert 'filterd_sessions_open{endpoint="milter"} 1.0' in text
    assert 'filterd_content_budget_bytes{kind="in_use"} 300.0' in text
    assert 'filterd_content_budget_bytes{kind="limit"} 1000.0' in text
    with pytest.raises(ConnectionRefusedError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_taken_port_is_one_line_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"^metrics.listen: cannot listen on '127.0.0.1:{port}': "
        ):
            metrics.start_metrics(MetricsSettings(f"127.0.0.1:{port}"), [], CollectorRegistry())


# (id, [metrics] listen, error)
BAD = [
    ("not-host-port", "9123", "metrics.listen: '9123' is not HOST:PORT"),
    ("beyond-loopback", "192.0.2.1:9123", "metrics.listen: '192.0.2.1:9123' is not a loopback"),
]  # fmt: skip


@pytest.mark.parametrize(("listen", "error"), cases(BAD))
def test_bad_listen_is_refused(listen: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        from_mapping({"metrics": {"listen": listen}})


def test_beyond_loopback_allowed_by_the_server_key() -> None:
    config = from_mapping(
        {"metrics": {"listen": "192.0.2.1:9123"}, "server": {"allow_non_loopback": True}}
    )
    assert isinstance(config, Config)


if __name__ == "__main__":
    PAGE.write_text(render_page(PAGE.read_text()))
