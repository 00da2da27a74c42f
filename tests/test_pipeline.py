"""The pipeline with a fake scanner: verdicts, headers, the canonical log line."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from filterd.core import Framing, Policy, Transaction
from filterd.core.verdict import Action
from filterd.pipeline import Pipeline
from filterd.scan import ScanResult

MESSAGE = b"Subject: secret-subject\r\n\r\nsecret-body-text\r\n"
SMUGGLED = b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<s@x>\r\n"


class FakeScanner:
    def __init__(self, result: ScanResult | Exception) -> None:
        self.result = result
        self.scanned: list[bytes] = []

    async def scan(self, content: bytes) -> ScanResult:
        self.scanned.append(content)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def transaction(pipeline: Pipeline, data: bytes) -> Transaction:
    txn = pipeline.begin(Framing.MESSAGE)
    txn.feed(data)
    txn.finish()
    return txn


# (id, scanner result, policy, want reply, want X-Virus-Status or None)
CASES = [
    ("clean", ScanResult.clean(0.01), Policy(), "250 2.0.0 Ok", "Clean"),
    ("infected", ScanResult.infected("Bad.Thing"), Policy(),
     "550 5.7.1 Virus found: Bad.Thing", None),
    ("error", ScanResult.error("connect failed"), Policy(),
     "451 4.7.1 Error: virus scanner unavailable, try again later", None),
    ("error-fail-open", ScanResult.error("connect failed"), Policy(fail_open=True),
     "250 2.0.0 Ok", "Unscanned"),
    ("scanner-raises", RuntimeError("bug"), Policy(),
     "451 4.3.0 Error: internal error in mail filter", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("result", "policy", "want", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(
    result: ScanResult | Exception, policy: Policy, want: str, status: str | None
) -> None:
    pipeline = Pipeline(policy, FakeScanner(result), hostname="mx.example.test")
    decision = asyncio.run(pipeline.decide(transaction(pipeline, MESSAGE)))
    assert decision.verdict.reply == want
    headers = dict(decision.headers)
    assert headers.get("X-Virus-Status") == status
    if status is not None:
        assert headers["X-Virus-Scanned"].endswith(" at mx.example.test")
        assert decision.content == MESSAGE
    else:
        assert decision.content == b"", "nothing to deliver when the verdict does not accept"


def test_framing_reject_skips_the_scanner() -> None:
    scanner = FakeScanner(ScanResult.clean())
    pipeline = Pipeline(Policy(), scanner)
    decision = asyncio.run(pipeline.decide(transaction(pipeline, SMUGGLED)))
    assert decision.verdict.action is Action.REJECT
    assert decision.verdict.reason == "smuggling"
    assert scanner.scanned == [], "a framing reject must not be scanned"


def test_hidden_hostname() -> None:
    pipeline = Pipeline(Policy(), FakeScanner(ScanResult.clean()), hostname="-")
    decision = asyncio.run(pipeline.decide(transaction(pipeline, MESSAGE)))
    assert " at " not in dict(decision.headers)["X-Virus-Scanned"]


def test_one_log_line_without_the_body() -> None:
    pipeline = Pipeline(Policy(), FakeScanner(ScanResult.infected("Bad.Thing")))
    with capture_logs() as logs:
        decision = asyncio.run(pipeline.decide(transaction(pipeline, MESSAGE)))
        pipeline.log(decision, "test", sender="a@example.test")
    (line,) = [entry for entry in logs if entry["event"] == "message"]
    assert line["reason"] == "virus"
    assert line["virus"] == "Bad.Thing"
    assert line["sender"] == "a@example.test"
    assert "secret" not in repr(logs), "a message body or subject reached the log"


def test_fail_open_warns_for_each_message() -> None:
    pipeline = Pipeline(Policy(fail_open=True), FakeScanner(ScanResult.error("down")))
    with capture_logs() as logs:
        for _ in range(2):
            asyncio.run(pipeline.decide(transaction(pipeline, MESSAGE)))
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 2
