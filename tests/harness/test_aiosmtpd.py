"""The harness against aiosmtpd from PyPI: 1.4.4 (vulnerable) and 1.4.6 (fixed), each in its own
virtual environment (tests/harness/aiosmtpd_venv.py), plus in-process aiosmtpd servers whose
handlers answer HELO the way OpenSMTPD and ESMTP-only servers do.

Known behaviour: aiosmtpd before 1.4.5 splits DATA lines on LF and ends DATA on the line
`.\\r\\n`, so E02, E14 and E19 end DATA, and as it processes pipelined input the smuggled
transaction is accepted (CVE-2024-27305). 1.4.6 ends DATA only on `\\r\\n.\\r\\n`, but still
processes pipelined input, input before the greeting and commands ended by a bare LF. Neither
offers PIPELINING, CHUNKING or (without a TLS context) STARTTLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.harness.aiosmtpd_serve import HeloOnce, NoHelo
from tests.harness.aiosmtpd_venv import Server, environment
from tests.harness.conftest import Outcome, Smuggle, smuggle_json, start_controller

ENDS_DATA = {"EXPLOITABLE", "HYGIENE", "EOD-ACCEPTED"}
# A loopback target answers in milliseconds; a reply later than the window is still judged
# right (more than one reply in all means the sequence ended DATA), only reported as late.
WINDOW = ["--timeout", "0.2", "--pause", "0.05"]
# The sequences aiosmtpd 1.4.4 lets a smuggled transaction through with.
VULNERABLE = {"E02", "E14", "E19"}


@pytest.fixture(scope="module")
def fixed() -> Iterator[Server]:
    server = Server(environment("1.4.6"), "plain").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vulnerable_python() -> Path:
    return environment("1.4.4")


@pytest.fixture(scope="module")
def vulnerable(vulnerable_python: Path) -> Iterator[Server]:
    server = Server(vulnerable_python, "plain").start()
    yield server
    server.stop()


def exploitable(outcome: Outcome) -> set[str]:
    return {i for i, v in outcome.verdicts().items() if v == "EXPLOITABLE"}


@pytest.fixture(scope="module")
def full_runs(fixed: Server, vulnerable: Server) -> dict[str, Outcome]:
    """The whole catalogue against both releases, the two runs side by side (each one
    connection at a time), since most of a run is waiting out windows."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            version: pool.submit(smuggle_json, server.address, *WINDOW)
            for version, server in (("1.4.6", fixed), ("1.4.4", vulnerable))
        }
        return {version: future.result() for version, future in runs.items()}


def test_fixed_release_full_catalogue(full_runs: dict[str, Outcome]) -> None:
    outcome = full_runs["1.4.6"]
    verdicts = outcome.verdicts()
    assert outcome.document()["greeting"].endswith("Python SMTP 1.4.6")

    assert outcome.code == 0, verdicts
    ended = {i: v for i, v in verdicts.items() if i.startswith("E") and v in ENDS_DATA}
    assert ended == {}, f"a fake terminator ended DATA on aiosmtpd 1.4.6: {ended}"
    # The pipelining weaknesses: pipelined transaction, commands after the end of data,
    # input before the greeting, input after EHLO, pipelining never negotiated, bare LF.
    weak = {i: verdicts[i] for i in ("P01", "P03", "P04", "P05", "P06", "P07")}
    assert weak == dict.fromkeys(weak, "LENIENT"), weak
    assert verdicts["C01"] == verdicts["C02"] == "PASS"
    # No CHUNKING: every BDAT form does not apply; no STARTTLS without a TLS context.
    bdat = {i: v for i, v in verdicts.items() if i == "P02" or i.endswith("B")}
    assert bdat == dict.fromkeys(bdat, "NOT-APPLICABLE"), bdat
    assert verdicts["P08"] == "NOT-APPLICABLE"
    split = {i: v for i, v in verdicts.items() if i.endswith(("-L", "-S"))}
    assert split == dict.fromkeys(split, "TREATED-AS-CONTENT"), split


def test_vulnerable_release_full_catalogue(full_runs: dict[str, Outcome]) -> None:
    outcome = full_runs["1.4.4"]
    verdicts = outcome.verdicts()
    assert outcome.document()["greeting"].endswith("Python SMTP 1.4.4")
    found = exploitable(outcome)

    assert outcome.code == 1, verdicts
    assert {probe_id.split("-")[0] for probe_id in found} == VULNERABLE, found
    # Each of them in every form aiosmtpd can take: pipelined, LF-only carrier, split write.
    assert found == {f"{base}{form}" for base in VULNERABLE for form in ("", "-L", "-S")}
    assert outcome.document()["exploitable"] == [i for i in verdicts if i in found]
    assert verdicts["C01"] == verdicts["C02"] == "PASS"


def test_no_pipelining_after_the_sequence_means_it_ended_data(
    vulnerable_python: Path, smuggle: Smuggle
) -> None:
    """OpenSMTPD's answer to input waiting after the line that ended DATA, in front of the
    LF-splitting reader of aiosmtpd 1.4.4: a stand-in for OpenSMTPD, which is not installed.

    The pipelined probe sees "500 Pipelining not supported" and a drop: the sequence ended
    DATA (EOD-ACCEPTED, not REJECTED). The split write sends each smuggled command on its own,
    and the smuggled transaction is accepted: EXPLOITABLE."""
    server = Server(vulnerable_python, "no-pipelining").start()
    try:
        # The default pause: a split write moves on at each reply, so it costs nothing here.
        ids = ["E02", "E02-S", "E14", "E14-S", "C01"]
        outcome = smuggle(server.address, "--json", "--timeout", "0.2", "--probe", *ids)
    finally:
        server.stop()
    probes = outcome.probes()
    verdicts = {i: p["verdict"] for i, p in probes.items()}

    assert outcome.code == 1, verdicts
    assert verdicts == {
        "E02": "EOD-ACCEPTED",
        "E02-S": "EXPLOITABLE",
        "E14": "EOD-ACCEPTED",
        "E14-S": "EXPLOITABLE",
        "C01": "PASS",
    }, verdicts
    assert "Pipelining not supported" in probes["E02"]["reason"]


@pytest.fixture(scope="module")
def helo_once() -> Iterator[Controller]:
    controller = start_controller(HeloOnce())
    yield controller
    controller.stop()


def test_p06_runs_on_a_server_that_refuses_a_second_helo(
    helo_once: Controller, smuggle: Smuggle
) -> None:
    """OpenSMTPD answers HELO after EHLO with 503 "Already identified": P06 says HELO first,
    so the probe runs (aiosmtpd processes the pipelined MAIL and RCPT: LENIENT)."""
    outcome = smuggle(f"127.0.0.1:{helo_once.port}", "--json", *WINDOW, "--probe", "P06", "P05")
    assert outcome.code == 0, outcome.out
    assert outcome.verdicts() == {"P06": "LENIENT", "P05": "LENIENT"}


def test_p06_does_not_apply_where_helo_is_refused(smuggle: Smuggle) -> None:
    controller = start_controller(NoHelo())
    try:
        outcome = smuggle(f"127.0.0.1:{controller.port}", "--json", *WINDOW, "--probe", "P06")
    finally:
        controller.stop()
    probe = outcome.document()["probes"][0]
    assert outcome.code == 0, probe
    assert probe["verdict"] == "NOT-APPLICABLE"
    assert "503 5.5.1 Invalid command: HELO not accepted" in probe["reason"]


def test_json_shape(fixed: Server, smuggle: Smuggle) -> None:
    outcome = smuggle(
        fixed.address,
        "--json",
        *WINDOW,
        "--probe",
        "E02",
        "C01",
        "--from",
        "a@example.test",
        "--to",
        "b@example.test",
        "--run-id",
        "run00001",
    )
    document = outcome.document()

    assert set(document) >= {
        "target",
        "greeting",
        "keywords",
        "source_address",
        "from",
        "to",
        "smuggled_from",
        "helo",
        "run",
        "timeout",
        "pause",
        "warnings",
        "probes",
        "summary",
        "exploitable",
        "exit_code",
    }
    assert document["exit_code"] == outcome.code == 0
    assert document["from"] == "a@example.test"
    assert document["exploitable"] == []
    e02 = document["probes"][0]
    assert set(e02) >= {"id", "kind", "sequence", "verdict", "reason", "transcript", "sink"}
    assert e02["sequence"] == repr(b"\n.\r\n")
    sent = [event["sent"] for event in e02["transcript"] if "sent" in event]
    assert any("\\n.\\r\\n\\r\\nmail FROM:<a@example.test>" in text for text in sent), sent
    assert any("Subject: filterd-smuggle run00001 E02 carrier" in text for text in sent)
    codes = [event["code"] for event in e02["transcript"] if "code" in event]
    assert codes[:5] == [220, 250, 250, 250, 354], codes


def test_defaults_use_the_greeting_hostname(fixed: Server, smuggle: Smuggle) -> None:
    outcome = smuggle(fixed.address, "--json", *WINDOW, "--probe", "C01")
    document = outcome.document()
    hostname = document["greeting"].split()[1]
    assert document["from"] == document["to"] == f"postmaster@{hostname}"


def test_no_mynetworks_warning_for_a_server_that_is_not_postfix(
    fixed: Server, smuggle: Smuggle
) -> None:
    outcome = smuggle(fixed.address, "--json", *WINDOW, "--probe", "C01")
    assert "$mynetworks" not in outcome.err
    assert outcome.document()["warnings"] == []


def test_compact_table_by_default(vulnerable: Server, smuggle: Smuggle) -> None:
    outcome = smuggle(vulnerable.address, *WINDOW, "--probe", "E02", "E01", "P04")
    lines = outcome.out.splitlines()

    assert outcome.code == 1
    assert "E02  exploitable  EXPLOITABLE         b'\\n.\\r\\n'" in lines
    assert "E01  exploitable  TREATED-AS-CONTENT  b'\\n.\\n'" in lines
    # One line for the exploitable probe, then the verdict line; no transcript.
    flagged = [line for line in lines if line.startswith("E02 EXPLOITABLE: ")]
    assert len(flagged) == 1, lines
    assert lines[-1] == "verdict: EXPLOITABLE: E02 (exit 1)"
    assert not any(" > b'" in line or " < 220 " in line for line in lines), lines
    assert len(lines) <= 10, lines


@pytest.mark.parametrize("flag", ["--evidence", "-v"])
def test_evidence_on_request(fixed: Server, smuggle: Smuggle, flag: str) -> None:
    outcome = smuggle(fixed.address, *WINDOW, "--probe", "E02", "P04", flag)
    assert outcome.code == 0
    assert "E02  exploitable  TREATED-AS-CONTENT  b'\\n.\\r\\n'" in outcome.out
    assert "> b'EHLO filterd-smuggle.invalid\\r\\n'" in outcome.out
    assert "< 220 " in outcome.out
    assert "P04 LENIENT" in outcome.out
    assert (
        outcome.out.splitlines()[-1]
        == "verdict: no smuggled message got through in 2 probes (exit 0)"
    )
