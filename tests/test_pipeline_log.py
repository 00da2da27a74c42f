"""Pipeline.log: the canonical line's level follows the verdict; the metrics count it."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from filterd.core import Content, EndOfMessage, Framing, MessageCore, Policy
from filterd.pipeline import Pipeline
from filterd.scan import ScanResult
from filterd.testing import FakeScanner
from tests.tables import cases

MESSAGE = b"Subject: x\r\n\r\nhello\r\n"
SMUGGLED = b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<s@x>\r\n"

# (id, scanner result, policy, content, want level, want reason)
CASES = [
    ("clean", ScanResult.clean(0.01), Policy(), MESSAGE, "info", "accepted"),
    ("infected", ScanResult.clean(), Policy(), MESSAGE + b"VIRUS-Bad.Thing\r\n", "info", "virus"),
    ("framing-reject", ScanResult.clean(), Policy(), SMUGGLED, "info", "smuggling"),
    ("scanner-error", ScanResult.error("connect failed"), Policy(), MESSAGE,
     "warning", "scan_error"),
    ("fail-open", ScanResult.error("connect failed"), Policy(fail_open=True), MESSAGE,
     "warning", "scan_error_fail_open"),
    ("scanner-raises", RuntimeError("bug"), Policy(), MESSAGE, "warning", "internal_error"),
]  # fmt: skip


def message(pipeline: Pipeline, data: bytes) -> MessageCore:
    core = pipeline.begin("test", Framing.MESSAGE)
    core.handle(Content(data))
    core.handle(EndOfMessage())
    return core


def count(reason: str) -> float:
    labels = {"endpoint": "test", "reason": reason}
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "filterd_messages"
        for sample in metric.samples
        if sample.name == "filterd_messages_total"
        and all(sample.labels.get(k) == want for k, want in labels.items())
    )


@pytest.mark.parametrize(
    ("result", "policy", "data", "level", "reason"),
    cases(CASES),
)
def test_message_line_level_follows_the_verdict(
    result: ScanResult | Exception, policy: Policy, data: bytes, level: str, reason: str
) -> None:
    pipeline = Pipeline(policy, FakeScanner(result))
    decision = asyncio.run(pipeline.decide(message(pipeline, data)))
    before = count(reason)
    with capture_logs() as logs:
        pipeline.log(decision.record)
    (line,) = [entry for entry in logs if entry["event"] == "message"]
    assert (line["log_level"], line["reason"]) == (level, reason)
    assert count(reason) == before + 1
