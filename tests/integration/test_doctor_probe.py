"""`filterd doctor --probe`: the harness verdict against a live private Postfix in the report.

The test bed starts a private Postfix (plain mode: one smtpd relaying to its sink); the doctor
reads that instance's own config directory with -c and probes its port. A short catalogue
subset and window keep the run to a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from filterd.cli import main

PROBES = ["C01", "E01", "E02", "P01", "P02"]
CLAMD_CONF = "LocalSocket /run/clamav/clamd.ctl\nAlertExceedsMax yes\n"


def run_doctor(
    capsys: pytest.CaptureFixture[str], postfix: Any, tmp_path: Path, *more: str
) -> tuple[int, str]:
    """`filterd doctor` on this Postfix's config directory, with `more` arguments."""
    clamd_conf = tmp_path / "clamd.conf"
    clamd_conf.write_text(CLAMD_CONF)
    capsys.readouterr()
    args = ["-c", str(postfix.config_directory), "--clamd-config", str(clamd_conf), *more]
    code = main(["doctor", *args])
    return code, capsys.readouterr().out


def run_probe(
    capsys: pytest.CaptureFixture[str], postfix: Any, tmp_path: Path, *more: str
) -> tuple[int, str]:
    """The doctor with a short probe (PROBES, half a second a reply) of the Postfix's port."""
    probe = ["--probe", f"127.0.0.1:{postfix.smtpd_port}", "--probe-timeout", "0.5"]
    return run_doctor(capsys, postfix, tmp_path, *probe, "--probe-only", *PROBES, *more)


def test_probe_shows_a_lenient_postfix_exploitable(
    make_postfix: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    postfix = make_postfix(main_cf={"smtpd_forbid_bare_newline": "no"})
    code, out = run_probe(capsys, postfix, tmp_path, "--json")
    document = json.loads(out)
    probe = document["probe"]
    findings = {(f["check"], f["severity"]) for f in document["findings"]}

    assert code == 1
    assert probe["verdicts"]["E02"] == "EXPLOITABLE", probe
    assert probe["verdicts"]["C01"] == "PASS", probe
    assert ("probe", "error") in findings
    assert ("bare-newline", "error") in findings  # the configuration says why


def test_probe_verdict_in_the_text_report(
    make_postfix: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    postfix = make_postfix(main_cf={"smtpd_forbid_bare_newline": "no"})
    code, out = run_probe(capsys, postfix, tmp_path)
    assert code == 1
    assert "\nprobe\n  error    probe: EXPLOITABLE: the harness smuggled a message through" in out


def test_probe_of_a_hardened_postfix_is_clean(
    make_postfix: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    postfix = make_postfix(
        main_cf={
            "smtpd_forbid_bare_newline": "normalize",
            "smtpd_forbid_bare_newline_exclusions": "",
            "smtpd_forbid_unauth_pipelining": "yes",
        }
    )
    code, out = run_probe(capsys, postfix, tmp_path, "--json")
    document = json.loads(out)
    verdicts = document["probe"]["verdicts"]
    at_least_warning = [f for f in document["findings"] if f["severity"] != "info"]

    assert "EXPLOITABLE" not in verdicts.values(), verdicts
    # Plain mode has no filterd listener, which is the one warning left.
    assert [f["check"] for f in at_least_warning] == ["listeners-unknown"]
    assert code == 1
    probe = [f for f in document["findings"] if f["check"] == "probe"]
    assert [f["severity"] for f in probe] == ["info"]


def test_probe_of_a_closed_port_is_an_error(
    make_postfix: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    postfix = make_postfix()
    code, out = run_doctor(capsys, postfix, tmp_path, "--probe", "127.0.0.1:1", "--json")
    document = json.loads(out)
    assert code == 1
    assert document["probe"]["error"].startswith("cannot talk to 127.0.0.1:1")
