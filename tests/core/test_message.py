"""The message core: events in, one record (verdict and canonical log fields) out."""

from __future__ import annotations

import ipaddress
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from filterd.core import (
    Abort,
    Connect,
    Content,
    EndOfMessage,
    EndpointRules,
    Event,
    Framing,
    InfectedAction,
    Mail,
    MessageCore,
    MessageRecord,
    Policy,
    Rcpt,
    ScanOutcome,
    ScanStatus,
    Traces,
)
from filterd.core import verdict as v
from filterd.core.errors import PolicyError
from tests.tables import cases

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
SMUGGLED = b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<s@x>\r\n"
TRACED = b"Subject: x\r\n\r\nhi\r\nMAIL FROM:<e@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n"
CLIENT = Connect("192.0.2.7", ipaddress.ip_address("192.0.2.7"))
ENVELOPE: list[Event] = [CLIENT, Mail("a@x.test"), Rcpt(), Rcpt()]
CLEAN = ScanOutcome(ScanStatus.CLEAN)
VIRUS = ScanOutcome(ScanStatus.INFECTED, virus="Bad.Thing")
DOWN = ScanOutcome(ScanStatus.ERROR, reason="connection refused")
HOLD = EndpointRules(infected=InfectedAction.QUARANTINE, can_hold=True)


def run(
    events: list[Event], scan: ScanOutcome | None, policy: Policy, rules: EndpointRules
) -> dict[str, Any]:
    core = MessageCore(policy, "test", rules=rules, framing=Framing.MESSAGE)
    for event in events:
        record = core.handle(event)
        assert record is None, f"{event} decided early"
    forced = core.framing_verdict()
    got = core.decided(None if forced is not None else scan)
    core.close()
    return got.fields()


def message(data: bytes) -> list[Event]:
    return [*ENVELOPE, Content(data), EndOfMessage()]


# (id, events, scan outcome, policy, rules, want: fields that must be there, as given;
#  None: must be absent)
CASES: list[tuple[str, list[Event], ScanOutcome, Policy, EndpointRules, dict[str, Any]]] = [
    ("clean", message(MESSAGE), CLEAN, Policy(), EndpointRules(),
     {"action": "accept", "reply": "250 2.0.0 Ok", "reason": "accepted", "size": len(MESSAGE),
      "client": "192.0.2.7", "sender": "a@x.test", "recipients": 2, "findings": None,
      "virus": None, "trace": None}),
    ("infected-reject", message(MESSAGE), VIRUS, Policy(), EndpointRules(),
     {"reply": "550 5.7.1 Virus found: Bad.Thing", "reason": "virus", "virus": "Bad.Thing"}),
    ("infected-endpoint-tempfail", message(MESSAGE), VIRUS, Policy(),
     EndpointRules(infected=InfectedAction.TEMPFAIL),
     {"reply": "451 4.7.1 Virus found: Bad.Thing", "reason": "virus"}),
    ("infected-accept", message(MESSAGE), VIRUS, Policy(infected=InfectedAction.ACCEPT),
     EndpointRules(), {"reply": "250 2.0.0 Ok: Bad.Thing", "reason": "virus_accepted"}),
    ("infected-quarantine", message(MESSAGE), VIRUS, Policy(), HOLD,
     {"action": "accept", "reply": "250 2.0.0 Ok", "reason": "virus_quarantined",
      "virus": "Bad.Thing"}),
    ("clean-under-quarantine", message(MESSAGE), CLEAN, Policy(), HOLD, {"reason": "accepted"}),
    ("scanner-down", message(MESSAGE), DOWN, Policy(), EndpointRules(),
     {"action": "tempfail", "reason": "scan_error", "scan_error": "connection refused"}),
    ("scanner-down-fail-open", message(MESSAGE), DOWN, Policy(fail_open=True), EndpointRules(),
     {"action": "accept", "reason": "scan_error_fail_open", "scan_error": "connection refused"}),
    ("smuggling-skips-scan", message(SMUGGLED), VIRUS, Policy(), EndpointRules(),
     {"reason": "smuggling", "findings": ["bare_lf", "fake_end_of_data", "smuggled_command"],
      "virus": None, "scan_time": None}),
    ("trace-note", message(TRACED), CLEAN, Policy(), EndpointRules(),
     {"reason": "accepted", "trace": "smtp_command_sequence", "trace_line": 3}),
    ("trace-reject-by-endpoint", message(TRACED), CLEAN, Policy(),
     EndpointRules(traces=Traces.REJECT),
     {"reason": "smuggling_trace", "trace": None, "trace_line": 3, "findings": []}),
    ("trace-no-by-endpoint", message(TRACED), CLEAN, Policy(traces=Traces.REJECT),
     EndpointRules(traces=Traces.NO), {"reason": "accepted", "trace_line": None}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("events", "scan", "policy", "rules", "want"),
    cases(CASES),
)
def test_events_to_record(
    events: list[Event],
    scan: ScanOutcome,
    policy: Policy,
    rules: EndpointRules,
    want: dict[str, Any],
) -> None:
    got = run(events, scan, policy, rules)
    assert {key: got.get(key) for key in want} == want
    assert list(got)[:4] == ["endpoint", "action", "reply", "reason"]


BYPASS = EndpointRules(
    bypass_networks=(ipaddress.ip_network("192.0.2.0/24"),), bypass_authenticated=True
)

# (id, rules, client, authenticated, want bypass reason or None)
BYPASSES = [
    ("network", BYPASS, CLIENT, False, "network"),
    ("authenticated", BYPASS, Connect("198.51.100.1", ipaddress.ip_address("198.51.100.1")),
     True, "authenticated"),
    ("neither", BYPASS, Connect("198.51.100.1", ipaddress.ip_address("198.51.100.1")),
     False, None),
    ("no-address", BYPASS, Connect("unknown"), False, None),
    ("not-configured", EndpointRules(), CLIENT, True, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules", "client", "authenticated", "want"),
    cases(BYPASSES),
)
def test_bypass_is_decided_at_mail(
    rules: EndpointRules, client: Connect, authenticated: bool, want: str | None
) -> None:
    core = MessageCore(Policy(), "test", rules=rules)
    assert core.handle(client) is None
    record = core.handle(Mail("a@x.test", authenticated=authenticated))
    if want is None:
        assert record is None
        return
    assert record is not None
    assert record.verdict is v.ACCEPT_BYPASS
    fields = record.fields()
    assert (fields["bypass"], fields["sender"], fields["client"]) == (
        want,
        "a@x.test",
        client.client,
    )


# (id, events before the abort, abort, want fields)
ABORTS = [
    ("unanswered-before-content", ENVELOPE, Abort(why="idle_timeout"),
     {"action": "unanswered", "reply": "", "reason": "idle_timeout", "size": None,
      "recipients": 2}),
    ("told-with-content", [*ENVELOPE, Content(b"Subject: x\r\n")], Abort(v.TEMPFAIL_TIMEOUT),
     {"action": "tempfail", "reply": "421 4.4.2 Error: timeout exceeded", "reason": "timeout",
      "size": 12}),
]  # fmt: skip


@pytest.mark.parametrize(("events", "abort", "want"), cases(ABORTS))
def test_abort_records_what_the_client_was_told(
    events: list[Event], abort: Abort, want: dict[str, Any]
) -> None:
    core = MessageCore(Policy(), "test", framing=Framing.MESSAGE)
    for event in events:
        core.handle(event)
    record = core.handle(abort)
    assert record is not None
    got = record.fields()
    assert {key: got.get(key) for key in want} == want


def test_the_record_is_immutable_and_the_endpoint_adds_its_own_fields() -> None:
    record = MessageRecord("proxy", v.ACCEPT, client="192.0.2.7", sender="a@x.test")
    with pytest.raises(FrozenInstanceError):
        record.sender = "b@x.test"  # type: ignore[misc]
    own = record.but(queue_id="ABC", own=(("session", 7),))
    assert record.fields().get("queue_id") is None, "but() must not change the original"
    assert list(own.fields())[-5:] == ["client", "sender", "recipients", "queue_id", "session"]


def test_quarantine_only_where_the_endpoint_can_hold() -> None:
    with pytest.raises(PolicyError, match="quarantine"):
        EndpointRules(infected=InfectedAction.QUARANTINE)
    with pytest.raises(PolicyError, match=r"\[milter\] infected"):
        Policy(infected=InfectedAction.QUARANTINE)  # [filter] is the proxy's too


def test_content_memory_is_given_back_on_close() -> None:
    from filterd.core import ContentBudget  # noqa: PLC0415

    budget = ContentBudget(1 << 20)
    core = MessageCore(Policy(), "test", framing=Framing.MESSAGE, budget=budget)
    core.handle(Content(MESSAGE))
    assert core.reserved > 0
    core.close()
    assert budget.in_use == 0


# (id, DATA stream in chunks, want dot_lines)
PIECE_CASES = [
    ("no dot line", [b"Subject: a\r\n\r\n", b"x" * 70_000 + b"\r\n", b".\r\n"], False),
    ("a stuffed dot line", [b"Subject: a\r\n\r\n..x\r\n", b"y" * 70_000 + b"\r\n.\r\n"], True),
]


@pytest.mark.parametrize(("chunks", "want_dot_lines"), cases(PIECE_CASES))
def test_new_pieces_give_the_content_as_it_arrives(
    chunks: list[bytes], want_dot_lines: bool
) -> None:
    core = MessageCore(Policy(), "proxy")
    for event in ENVELOPE:
        core.handle(event)
    streamed: list[bytes] = []
    for chunk in chunks:
        core.handle(Content(chunk))
        streamed += core.new_pieces()
    assert len(streamed) > 1, "nothing came before the end of data"
    streamed += core.new_pieces()
    assert b"".join(streamed) == core.content()
    assert all(isinstance(piece, bytes) for piece in streamed), "a piece could still change"
    assert core.dot_lines is want_dot_lines
