"""The harness against a real private Postfix 3.7 on loopback (tests/testbed/postfix.py).

The test bed's Postfix relays to a sink; where the harness's own --sink is the last hop,
`relayhost` points there instead. The exclusions are emptied so that 127.0.0.1 gets the
configured behaviour, not the lenient one Postfix gives $mynetworks by default
(postconf(5): smtpd_forbid_bare_newline_exclusions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.harness.conftest import Smuggle, sink_args, start_controller
from tests.harness.relay import CarelessRelay
from tests.testbed.common import free_port

pytestmark = pytest.mark.integration

# Probes that tell the three settings apart, with one of each variant form, kept short so
# the suite stays fast. P01, P03, C01 and C02 send ordinary messages that reach a sink.
PROBES = ["E01", "E02", "E03", "E06", "E11", "E14", "C01", "C02", "P01", "P02", "P03", "P07"]
VARIANTS = ["E01-B", "E02-L", "E01-LB", "E02-S", "E06-S"]
# Postfix answers in milliseconds on loopback; a later reply is still judged right, only
# reported as late (tests/harness/test_verdict.py "split late").
WINDOW = "0.3"
JSON = ["--json", "--timeout", WINDOW]


def settings(mode: str, **more: str) -> dict[str, str]:
    return {
        "smtpd_forbid_bare_newline": mode,
        "smtpd_forbid_bare_newline_exclusions": "",
        **more,
    }


def test_lenient_postfix_is_exploitable(make_postfix: Any, smuggle: Smuggle) -> None:
    sink_port = free_port()
    postfix = make_postfix(main_cf=settings("no", relayhost=f"[127.0.0.1]:{sink_port}"))
    outcome = smuggle(
        f"127.0.0.1:{postfix.smtpd_port}",
        *JSON,
        "--probe",
        *PROBES,
        *VARIANTS,
        *sink_args(sink_port, "15"),
    )
    probes = outcome.probes()

    assert outcome.code == 1, outcome.err
    for probe_id in ("E02", *VARIANTS):
        assert probes[probe_id]["verdict"] == "EXPLOITABLE", probes[probe_id]["reason"]
    assert probes["E01"]["verdict"] == "EXPLOITABLE", probes["E01"]["reason"]
    assert probes["E06"]["verdict"] == "EXPLOITABLE", probes["E06"]["reason"]
    assert probes["E11"]["verdict"] == "HYGIENE", probes["E11"]["reason"]
    assert probes["P02"]["verdict"] == "EXPLOITABLE", probes["P02"]["reason"]
    # The complete proof: Postfix relayed the smuggled message to the sink as a message.
    assert probes["E02"]["sink"] == {"total": 2, "smuggled": 1}
    assert probes["E02-S"]["sink"] == {"total": 2, "smuggled": 1}
    assert probes["C01"]["verdict"] == "PASS"
    assert probes["C02"]["verdict"] == "PASS"
    # P01's pipelined message was delivered: an ordinary message, not a smuggled one.
    assert probes["P01"]["verdict"] == "LENIENT", probes["P01"]["reason"]
    assert probes["P01"]["sink"] == {"total": 1, "smuggled": 0}


def test_normalize_relaying_to_the_sink_is_clean(make_postfix: Any, smuggle: Smuggle) -> None:
    """The hardened setting of Postfix 3.7 (its default smtpd_forbid_unauth_pipelining = no)
    as the last hop before --sink: P01's and P03's pipelined messages are delivered, which is
    no smuggling, and every fake sequence stays in its carrier. Exit 0."""
    sink_port = free_port()
    postfix = make_postfix(main_cf=settings("normalize", relayhost=f"[127.0.0.1]:{sink_port}"))
    target = f"127.0.0.1:{postfix.smtpd_port}"
    sink = sink_args(sink_port, "15")
    outcome = smuggle(target, *JSON, "--probe", *PROBES, *VARIANTS, *sink)
    probes = outcome.probes()
    verdicts = {i: p["verdict"] for i, p in probes.items()}

    assert outcome.code == 0, verdicts
    assert verdicts["P01"] == verdicts["P03"] == "LENIENT", verdicts
    assert probes["P01"]["sink"] == {"total": 1, "smuggled": 0}
    assert probes["P03"]["sink"] == {"total": 2, "smuggled": 0}
    for probe_id in ("E01", "E02", "E06", "E14", *VARIANTS):
        assert verdicts[probe_id] == "TREATED-AS-CONTENT", probes[probe_id]["reason"]
        assert probes[probe_id]["sink"] == {"total": 1, "smuggled": 0}, probe_id
    assert verdicts["C01"] == verdicts["C02"] == "PASS"


def test_mynetworks_warning_once_for_postfix(make_postfix: Any, smuggle: Smuggle) -> None:
    postfix = make_postfix(main_cf=settings("normalize"))
    outcome = smuggle(f"127.0.0.1:{postfix.smtpd_port}", "--timeout", WINDOW, "--probe", "C01")
    assert outcome.code == 0, outcome.out
    assert outcome.err.count("$mynetworks") == 1, outcome.err
    assert "$mynetworks" not in outcome.out


def test_hardened_postfix_is_clean(make_postfix: Any, smuggle: Smuggle) -> None:
    postfix = make_postfix(main_cf=settings("reject", smtpd_forbid_unauth_pipelining="yes"))
    outcome = smuggle(
        f"127.0.0.1:{postfix.smtpd_port}",
        *JSON,
        "--probe",
        *PROBES,
        *VARIANTS,
        "P06",
    )
    probes = outcome.probes()
    verdicts = {i: p["verdict"] for i, p in probes.items()}

    assert outcome.code == 0, verdicts
    assert verdicts["E02"] == "REJECTED", probes["E02"]["reason"]
    # HELO as the first command: Postfix checks every command of a non-ESMTP session.
    assert verdicts["P06"] == "BLOCKED-BY-SYNC", probes["P06"]["reason"]
    assert verdicts["P01"] == "BLOCKED-BY-SYNC", probes["P01"]["reason"]
    assert verdicts["P03"] == "BLOCKED-BY-SYNC", probes["P03"]["reason"]
    assert verdicts["P07"] == "REJECTED"
    assert verdicts["C01"] == verdicts["C02"] == "PASS"
    for probe_id in VARIANTS:
        assert verdicts[probe_id] == "REJECTED", probes[probe_id]["reason"]


@pytest.fixture
def careless_relay_to() -> Iterator[Any]:
    controllers: list[Controller] = []

    def start(port: int) -> Controller:
        controller = start_controller(CarelessRelay("127.0.0.1", port))
        controllers.append(controller)
        return controller

    yield start
    for controller in controllers:
        controller.stop()


def test_sink_proves_smuggling_behind_a_strict_target(
    make_postfix: Any, careless_relay_to: Any, smuggle: Smuggle
) -> None:
    """harness -> aiosmtpd (strict, passes bytes on) -> Postfix "no" -> harness sink.

    The target's replies show nothing (one 250); only the sink sees the second message."""
    sink_port = free_port()
    postfix = make_postfix(main_cf=settings("no", relayhost=f"[127.0.0.1]:{sink_port}"))
    relay = careless_relay_to(postfix.smtpd_port)
    outcome = smuggle(
        f"127.0.0.1:{relay.port}",
        *JSON,
        "--probe",
        "E02",
        "C01",
        *sink_args(sink_port, "15"),
    )
    probes = outcome.probes()

    assert outcome.code == 1, outcome.err
    assert probes["E02"]["verdict"] == "EXPLOITABLE", probes["E02"]["reason"]
    assert "sink received 1 smuggled" in probes["E02"]["reason"]
    assert probes["C01"]["verdict"] == "PASS"


# What filterd's proxy must answer to each probe sent straight to its port, in reject mode:
# every fake end of data refused, every synchronisation break stopped, the controls passed.
# E13, E17 and E18 hold the real terminator (or none): content, or refused for the stray byte.
PROXY_WANT = {
    **{f"E{n:02d}": {"REJECTED"} for n in range(1, 23)},
    "E13": {"REJECTED", "TREATED-AS-CONTENT"},
    "E17": {"TREATED-AS-CONTENT"},
    "E18": {"REJECTED", "TREATED-AS-CONTENT"},
    "C01": {"PASS"},
    "C02": {"PASS"},
    "P01": {"BLOCKED-BY-SYNC"},
    "P02": {"NOT-APPLICABLE"},  # no CHUNKING offered
    "P03": {"BLOCKED-BY-SYNC"},
    "P04": {"BLOCKED-BY-SYNC"},
    "P05": {"BLOCKED-BY-SYNC"},
    "P06": {"BLOCKED-BY-SYNC"},
    "P07": {"REJECTED"},
    "P08": {"NOT-APPLICABLE"},  # no STARTTLS offered
    # One of each variant form: the BDAT forms need CHUNKING, the others are refused.
    "E01-B": {"NOT-APPLICABLE"},
    "E01-LB": {"NOT-APPLICABLE"},
    "E02-L": {"REJECTED"},
    "E02-S": {"REJECTED"},
    "E06-S": {"REJECTED"},
}


def test_filterd_proxy_is_clean(make_postfix: Any, clamd: Any, smuggle: Smuggle) -> None:
    """harness -> filterd proxy -> Postfix reinjection (master.cf.d/proxy.cf) -> sink, and
    harness -> Postfix front -> filterd proxy -> Postfix reinjection -> sink."""
    from structlog.testing import capture_logs  # noqa: PLC0415 (local: only this test)

    from filterd.core import BareNewline, Policy  # noqa: PLC0415 (the harness tests stay core-free)
    from tests.integration.proxy_chain import start_chain  # noqa: PLC0415

    policy = Policy(forbid_bare_newline=BareNewline.REJECT)
    # greet_pause: P04's early EHLO must have arrived when filterd looks (a timing check).
    chain = start_chain(make_postfix, clamd.address, policy, greet_pause=0.05)
    try:
        with capture_logs() as logs:
            addresses = ["--from", "a@example.org", "--to", "b@example.net"]
            smuggled = ["--smuggled-from", "smuggled@example.org"]
            direct = smuggle(
                f"127.0.0.1:{chain.proxy.port}",
                "--json",
                "--timeout",
                "0.3",
                "--probe",
                *PROXY_WANT,
                *addresses,
                *smuggled,
            )
            front = smuggle(
                f"127.0.0.1:{chain.postfix.smtpd_port}",
                *JSON,
                "--probe",
                "E02",
                "E04",
                "C01",
                "C02",
                "P01",
                *addresses,
                *smuggled,
            )
            chain.postfix.sink.assert_quiet(1.0)
            senders = {message.mail_from for message in chain.postfix.sink.messages}
    finally:
        chain.proxy.close()

    got = direct.verdicts()
    wrong = {i: v for i, v in got.items() if v not in PROXY_WANT.get(i, {v})}
    assert direct.code == 0, got
    assert not wrong, wrong
    assert set(PROXY_WANT) == set(got), "every probe ran"
    assert front.code == 0, front.verdicts()
    assert "smuggled@example.org" not in senders, "no smuggled message reached the downstream"
    reasons = {entry.get("reason") for entry in logs if entry["event"] == "message"}
    assert {"smuggling", "pipelining", "accepted"} <= reasons, reasons
