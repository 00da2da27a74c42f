"""The pipeline with a fake scanner: verdicts, headers, the canonical log line."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from filterd.core import (
    Content,
    ContentBudget,
    EndOfMessage,
    Framing,
    MessageCore,
    Policy,
    Traces,
)
from filterd.core.verdict import Action
from filterd.pipeline import Decision, Pipeline, to_outcome
from filterd.scan import ScanResult
from filterd.scan import ScanStatus as ScannerStatus
from filterd.testing import FakeScanner
from tests.tables import cases

MESSAGE = b"Subject: secret-subject\r\n\r\nsecret-body-text\r\n"
SMUGGLED = b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<s@x>\r\n"


def transaction(pipeline: Pipeline, data: bytes) -> MessageCore:
    core = pipeline.begin("test", Framing.MESSAGE)
    core.handle(Content(data))
    core.handle(EndOfMessage())
    return core


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


def decided(
    result: ScanResult | Exception, policy: Policy, *, keep_content: bool = True
) -> tuple[Decision, FakeScanner]:
    scanner = FakeScanner(result)
    pipeline = Pipeline(policy, scanner, hostname="mx.example.test")
    message = transaction(pipeline, MESSAGE)
    return asyncio.run(pipeline.decide(message, keep_content=keep_content)), scanner


@pytest.mark.parametrize(("result", "policy", "want", "status"), cases(CASES))
def test_decide(
    result: ScanResult | Exception, policy: Policy, want: str, status: str | None
) -> None:
    decision, _ = decided(result, policy)
    assert decision.verdict.reply == want
    headers = dict(decision.headers)
    assert headers.get("X-Virus-Status") == status
    if status is not None:
        assert headers["X-Virus-Scanned"].endswith(" at mx.example.test")
        assert decision.content == MESSAGE
    else:
        assert decision.content == b"", "nothing to deliver when the verdict does not accept"


@pytest.mark.parametrize(("result", "policy", "want", "status"), cases(CASES))
def test_decide_without_keeping_the_content(
    result: ScanResult | Exception, policy: Policy, want: str, status: str | None
) -> None:
    """The milter's decision: the same verdict, headers and log facts, and no content."""
    del status  # the headers are compared whole
    kept, _ = decided(result, policy)
    got, scanner = decided(result, policy, keep_content=False)
    assert got.content == b""
    assert (got.verdict.reply, got.headers) == (want, kept.headers)
    fields = {key: value for key, value in got.record.fields().items() if key != "elapsed"}
    assert fields == {key: value for key, value in kept.record.fields().items() if key != "elapsed"}
    assert scanner.scanned in ([MESSAGE], []), "the scanner still sees the whole content"


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
        pipeline.log(decision.record.but(sender="a@example.test"))
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


# A `\n.\r\n` attempt that Postfix (smtpd_forbid_bare_newline = normalize) kept as one message:
# behind it the proxy gets the smuggled commands as dot-stuffed body lines (SMTP_DATA framing).
POSTFIXED = (
    b"Subject: carrier\r\n\r\nhello\r\n..\r\nMAIL FROM:<e@x.test>\r\nRCPT TO:<v@y.test>\r\n"
    b"DATA\r\nSubject: forged\r\n\r\nforged\r\n.\r\n"
)


def proxy_transaction(pipeline: Pipeline, data: bytes) -> MessageCore:
    core = pipeline.begin("test", Framing.SMTP_DATA)
    for line in data.splitlines(keepends=True):  # as reads arrive
        core.handle(Content(line))
    assert core.done
    return core


# (id, policy, want reply, want "trace" log field, want scanned)
PROXY_TRACES = [
    ("note", Policy(), "250 2.0.0 Ok", "smtp_command_sequence", True),
    ("reject", Policy(traces=Traces.REJECT),
     "550 5.7.1 Error: message contains an SMTP command sequence (SMTP smuggling)", None, False),
    ("no", Policy(traces=Traces.NO), "250 2.0.0 Ok", None, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "want", "logged", "scanned"),
    cases(PROXY_TRACES),
)
def test_traces_in_smtp_data_framing(
    policy: Policy, want: str, logged: str | None, scanned: bool
) -> None:
    scanner = FakeScanner(ScanResult.clean())
    pipeline = Pipeline(policy, scanner)
    decision = asyncio.run(pipeline.decide(proxy_transaction(pipeline, POSTFIXED)))
    assert decision.verdict.reply == want
    fields = decision.record.fields()
    assert fields.get("trace") == logged
    assert fields.get("trace_line") == (None if policy.traces is Traces.NO else 4)
    assert bool(scanner.scanned) == scanned


def test_budget_through_the_pipeline() -> None:
    budget = ContentBudget(len(MESSAGE) * 3)
    pipeline = Pipeline(Policy(), FakeScanner(ScanResult.clean()), budget=budget)
    assert pipeline.budget is budget
    accepted = transaction(pipeline, MESSAGE)
    decision = asyncio.run(pipeline.decide(accepted))
    assert decision.content == MESSAGE
    assert budget.in_use == len(MESSAGE), "decide() must not release what the Decision holds"
    big = pipeline.begin("test", Framing.MESSAGE)
    big.handle(Content(MESSAGE * 3))  # over what is left
    big.handle(EndOfMessage())
    refused = asyncio.run(pipeline.decide(big))
    assert refused.verdict.reply == "452 4.3.1 Error: insufficient system resources"
    assert refused.verdict.reason == "insufficient_resources"
    accepted.close()
    big.close()
    assert budget.in_use == 0


@pytest.mark.parametrize("status", list(ScannerStatus), ids=lambda status: status.value)
def test_every_scanner_status_maps_to_the_core(status: ScannerStatus) -> None:
    # The one bridge between the scanner's result and the core's outcome: a status added on
    # one side only fails here, not on live mail.
    facts = {
        ScannerStatus.CLEAN: ScanResult.clean(),
        ScannerStatus.INFECTED: ScanResult.infected("Bad.Thing"),
        ScannerStatus.ERROR: ScanResult.error("down"),
        ScannerStatus.OVERSIZE: ScanResult.oversize("too big"),
    }[status]
    outcome = to_outcome(facts)
    assert (outcome.status.value, outcome.virus, outcome.reason) == (
        status.value,
        facts.virus,
        facts.reason,
    )


def test_an_exception_is_logged_as_internal_without_a_size() -> None:
    pipeline = Pipeline(Policy(), FakeScanner(RuntimeError("bug")))
    decision = asyncio.run(pipeline.decide(transaction(pipeline, MESSAGE)))
    fields = decision.record.fields()
    assert (fields["reason"], fields["error"], "size" in fields) == (
        "internal_error",
        "internal",
        False,
    )


def test_quarantine_holds_with_the_infected_header() -> None:
    from filterd.core import EndpointRules, InfectedAction  # noqa: PLC0415

    pipeline = Pipeline(Policy(), FakeScanner(ScanResult.infected("Bad.Thing")), hostname="-")
    core = pipeline.begin(
        "test",
        Framing.MESSAGE,
        rules=EndpointRules(infected=InfectedAction.QUARANTINE, can_hold=True),
    )
    core.handle(Content(MESSAGE))
    core.handle(EndOfMessage())
    decision = asyncio.run(pipeline.decide(core))
    assert (decision.verdict.reason, decision.verdict.reply) == (
        "virus_quarantined",
        "250 2.0.0 Ok",
    )
    assert dict(decision.headers)["X-Virus-Status"] == "Infected (Bad.Thing)"
    assert decision.content == MESSAGE
    assert decision.record.virus == "Bad.Thing"
