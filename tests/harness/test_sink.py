"""--sink: the harness listens as the last hop of a relay chain and counts what arrives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from filterd.harness.sink import arrivals
from tests.harness.conftest import Smuggle, sink_args, start_controller
from tests.harness.relay import CarelessRelay
from tests.testbed.common import free_port


@pytest.fixture
def sink_port() -> int:
    return free_port()


@pytest.fixture
def relay_to_sink(sink_port: int) -> Iterator[Controller]:
    """aiosmtpd that forwards every message unchanged to the harness's sink."""
    controller = start_controller(CarelessRelay("127.0.0.1", sink_port))
    try:
        yield controller
    finally:
        controller.stop()


def test_strict_last_hop_receives_only_the_carrier(
    relay_to_sink: Controller, sink_port: int, smuggle: Smuggle
) -> None:
    outcome = smuggle(
        f"127.0.0.1:{relay_to_sink.port}",
        "--json",
        "--timeout",
        "0.3",
        "--probe",
        "E02",
        "C01",
        *sink_args(sink_port, "5"),
    )
    probes = outcome.probes()

    assert outcome.code == 0, outcome.err
    assert probes["E02"]["verdict"] == "TREATED-AS-CONTENT"
    assert probes["E02"]["sink"] == {"total": 1, "smuggled": 0}
    assert probes["C01"]["sink"] == {"total": 1, "smuggled": 0}


CARRIER = (
    b"Received: from x\r\nSubject: filterd-smuggle abcd1234 E02 carrier\r\n\r\n"
    b"body\n.\r\nmail FROM:<a>\r\ndata\r\nSubject: filterd-smuggle abcd1234 E02 smuggled\r\n"
)
SMUGGLED = b"Subject: filterd-smuggle abcd1234 E02 smuggled\r\n\r\nSMUGGLED\r\n"
OTHER_RUN = b"Subject: filterd-smuggle zzzz9999 E02 smuggled\r\n\r\nSMUGGLED\r\n"


@pytest.mark.parametrize(
    ("messages", "total", "smuggled"),
    [
        ([CARRIER], 1, 0),
        ([CARRIER, SMUGGLED], 2, 1),
        ([CARRIER, OTHER_RUN], 1, 0),
        ([], 0, 0),
    ],
    ids=["smuggled headers inside a body do not count", "separate message", "other run", "none"],
)
def test_arrivals(messages: list[bytes], total: int, smuggled: int) -> None:
    got = arrivals(messages, "abcd1234", "E02")
    assert (got.total, got.smuggled) == (total, smuggled)
