"""The whole catalogue against plain aiosmtpd 1.4.6 on loopback.

Known behaviour (smuggling.md §1 item 3, §4): no fake terminator ends DATA, but it processes
pipelined input, input before the greeting and command lines ended by a bare LF. It offers
neither PIPELINING nor CHUNKING nor STARTTLS.
"""

from __future__ import annotations

from aiosmtpd.controller import Controller

from tests.harness.conftest import Smuggle

ENDS_DATA = {"EXPLOITABLE", "HYGIENE", "EOD-ACCEPTED"}


def target(controller: Controller) -> str:
    return f"{controller.hostname}:{controller.port}"


def test_full_catalogue(aiosmtpd_server: Controller, smuggle: Smuggle) -> None:
    outcome = smuggle(target(aiosmtpd_server), "--json", "--timeout", "0.3")
    verdicts = outcome.verdicts()

    assert outcome.code == 0, outcome.err
    ended = {i: v for i, v in verdicts.items() if i.startswith("E") and v in ENDS_DATA}
    assert ended == {}, f"a fake terminator ended DATA on aiosmtpd: {ended}"
    # The pipelining weaknesses: pipelined transaction, commands after the end of data,
    # input before the greeting, input after EHLO, pipelining never negotiated, bare LF.
    weak = {i: verdicts[i] for i in ("P01", "P03", "P04", "P05", "P06", "P07")}
    assert weak == dict.fromkeys(weak, "LENIENT"), weak
    assert verdicts["C01"] == "PASS"
    assert verdicts["C02"] == "PASS"
    assert verdicts["P02"] == "NOT-APPLICABLE"  # no CHUNKING in aiosmtpd
    assert verdicts["P08"] == "NOT-APPLICABLE"  # no STARTTLS without a TLS context


def test_json_shape(aiosmtpd_server: Controller, smuggle: Smuggle) -> None:
    outcome = smuggle(
        target(aiosmtpd_server),
        "--json",
        "--timeout",
        "0.3",
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


def test_defaults_use_the_greeting_hostname(aiosmtpd_server: Controller, smuggle: Smuggle) -> None:
    outcome = smuggle(target(aiosmtpd_server), "--json", "--timeout", "0.3", "--probe", "C01")
    document = outcome.document()
    hostname = document["greeting"].split()[1]
    assert document["from"] == document["to"] == f"postmaster@{hostname}"


def test_loopback_source_warns(aiosmtpd_server: Controller, smuggle: Smuggle) -> None:
    outcome = smuggle(target(aiosmtpd_server), "--json", "--timeout", "0.3", "--probe", "C01")
    assert "$mynetworks" in outcome.err
    assert any("$mynetworks" in warning for warning in outcome.document()["warnings"])


def test_table_shows_bytes_replies_and_verdicts(
    aiosmtpd_server: Controller, smuggle: Smuggle
) -> None:
    outcome = smuggle(target(aiosmtpd_server), "--timeout", "0.3", "--probe", "E02", "P04")
    assert outcome.code == 0
    assert "E02  exploitable  TREATED-AS-CONTENT  b'\\n.\\r\\n'" in outcome.out
    assert "> b'EHLO filterd-smuggle.invalid\\r\\n'" in outcome.out
    assert "< 220 " in outcome.out
    assert "P04 LENIENT" in outcome.out
