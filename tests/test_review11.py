"""Defects found by the issue-11 review (a mail administrator's run of the install), each
with the case that failed before its fix."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd import check_cli, config, logs, report
from filterd.doctor.postconf import PostconfError, find_postconf


def test_debian_clamd_conf_var_run_socket_is_the_default_address(tmp_path: Path) -> None:
    """Debian's clamd.conf says LocalSocket /var/run/clamav/clamd.ctl; filterd's default is
    unix:/run/clamav/clamd.ctl: the same socket (/var/run -> /run), so the check applies."""
    conf = tmp_path / "clamd.conf"
    conf.write_text("LocalSocket /var/run/clamav/clamd.ctl\nStreamMaxLength 10M\n")
    got = check_cli.gather(config.Config(), clamd_conf=str(conf)).stream_max_length
    assert got == 10 * 1024 * 1024


@pytest.fixture
def no_syslog(tmp_path: Path) -> Iterator[io.StringIO]:
    out = io.StringIO()
    missing = logs.Syslog(address=str(tmp_path / "no-such-log.sock"))
    logs.configure("json", "info", out, syslog=missing)
    yield out
    logs.reset()


def test_unreachable_syslog_prints_no_logging_tracebacks(
    no_syslog: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lines go to the stream as the warning says, and nothing else: no
    '--- Logging error ---' traceback on stderr for every line."""
    logging.getLogger("filterd.test").warning("one line")
    events = [json.loads(line)["event"] for line in no_syslog.getvalue().splitlines()]
    assert events == ["syslog socket not reachable; logging to stderr as well", "one line"]
    assert "Logging error" not in capsys.readouterr().err


def _summary(lines: list[dict[str, object]]) -> report.Summary:
    summary = report.Summary()
    for line in lines:
        summary.add(line)
    return summary


def test_a_pipelining_reject_at_end_of_data_is_one_attempt() -> None:
    """The proxy logs a `proxy session` pipelining line and then the message line with reason
    pipelining for the same session: one attempt, not two."""
    session = {"event": "proxy session", "what": "pipelining", "peer": "192.0.2.1",
               "session": 7, "after": "END-OF-DATA"}  # fmt: skip
    message = {"event": "message", "endpoint": "proxy", "action": "reject",
               "reason": "pipelining", "client": "192.0.2.1", "session": 7}  # fmt: skip
    summary = _summary([session, message])
    assert summary.framing == {"pipelining": 1}
    assert summary.framing_clients == {"192.0.2.1": 1}


def test_without_main_cf_the_deadline_is_checked_against_postfix_default(tmp_path: Path) -> None:
    """A Postfix installed with "No configuration" has no main.cf, and `postconf -h` fails;
    Postfix's own default (`postconf -d`, 100s) is what it will use: reply_deadline = 500 is
    still refused."""
    try:
        find_postconf()
    except PostconfError:
        pytest.skip("postconf is not installed")
    facts = check_cli.gather(config.Config(), postconf_dir=str(tmp_path))
    assert facts.smtpd_proxy_timeout == 100
