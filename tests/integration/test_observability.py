"""Metrics and `filterd report` on a real run: `filterd serve --proxy` in front of a sink.

Run A scans with the test bed's clamd and logs JSON to stderr while /metrics is scraped;
run B has no clamd (every message 451) and logs to a private syslog socket. Their lines,
mixed with Postfix lines as /var/log/mail.log would hold them, are what `filterd report` reads.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from filterd.testing import RawSmtpClient, eicar, last_line, smtp_session
from tests import test_log_fields
from tests.testbed.clamd import EICAR_NAME, SECOND_NAME, Clamd, second_sample_bytes
from tests.testbed.common import free_port
from tests.testbed.sink import Sink

pytestmark = pytest.mark.integration  # needs the test bed's clamd

HEAD = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n\r\n"
CLEAN = HEAD + b"hello\r\n"
SMUGGLED = HEAD + b"hi\n.\r\nMAIL FROM:<s@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nz\r\n"
# Run A: (content, want reply code); run B: clean mail while clamd is unreachable.
RUN_A = (
    [(CLEAN, 250)] * 3
    + [(HEAD + eicar() + b"\r\n", 550)] * 2
    + [
        (HEAD + second_sample_bytes(), 550),
        (SMUGGLED, 550),
    ]
)
RUN_B = [(CLEAN, 451)] * 2
POSTFIX_LINES = [
    "Dec  1 23:10:00 mx postfix/smtpd[4242]: connect from localhost[127.0.0.1]",
    "Dec  1 23:10:00 mx postfix/cleanup[4243]: 4F1A2B3C: message-id=<1@example.test>",
    "Dec  1 23:10:01 mx postfix/qmgr[811]: 4F1A2B3C: from=<a@example.test>, size=321, nrcpt=1",
    "Dec  1 23:10:02 mx postfix/smtpd[4242]: warning: filterd[77]: looks like ours, is not JSON",
]


@dataclass
class Run:
    stderr: str
    metrics: str
    syslog: list[str]


def send(port: int, content: bytes) -> int:
    with smtp_session(port) as client:
        client.command(b"MAIL FROM:<a@example.test>\r\n")
        client.command(b"RCPT TO:<b@example.test>\r\n")
        assert client.command(b"DATA\r\n").startswith("354")
        client.send(content + b".\r\n")
        code = int(last_line(client.reply())[:3])
        client.command(b"QUIT\r\n")
    return code


def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            RawSmtpClient(port).close()
        except OSError:
            subprocess.run(["sleep", "0.05"], check=True)
            continue
        return
    raise AssertionError(f"filterd did not listen on {port}")


def serve(tmp_path: Path, clamd: str, sink: Sink, config: str, messages: list[tuple[bytes, int]],
          *, metrics_port: int | None = None) -> tuple[str, str]:  # fmt: skip
    """Run `filterd serve --proxy`, send `messages`, scrape /metrics; (stderr, metrics)."""
    port = free_port()
    cfg = tmp_path / f"filterd-{port}.toml"
    cfg.write_text(config)
    command = [sys.executable, "-m", "filterd.cli", "serve", "--config", str(cfg),
               "--proxy", f"127.0.0.1:{port}", "--downstream", f"127.0.0.1:{sink.port}",
               "--clamd", clamd,
               # One process: run B's syslog socket is read only after the run, so its
               # queue bounds the lines a run may write (workers add their own).
               "--workers", "1"]  # fmt: skip
    scraped = ""
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            wait_listening(port)
            got = [send(port, content) for content, _ in messages]
            assert got == [code for _, code in messages]
            if metrics_port is not None:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as response:
                    scraped = response.read().decode()
        finally:
            process.terminate()
            _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    return err, scraped


@pytest.fixture(scope="module")
def run(clamd: Clamd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp_path = tmp_path_factory.mktemp("observability")
    sink = Sink()
    sink.start()
    log_socket = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(log_socket))
    sock.settimeout(5)
    try:
        port = free_port()
        config_a = f'[log]\nformat = "json"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        err, scraped = serve(tmp_path, clamd.address, sink, config_a, RUN_A, metrics_port=port)
        config_b = f'[log]\nsyslog = true\nsyslog_address = "{log_socket}"\n'
        err_b, _ = serve(tmp_path, "tcp:127.0.0.1:1", sink, config_b, RUN_B)
        assert err_b == ""
        datagrams = []
        sock.settimeout(0.5)
        while True:
            try:
                datagrams.append(sock.recv(65536).decode())
            except TimeoutError:
                break
        yield Run(err, scraped, datagrams)
    finally:
        sock.close()
        sink.close()


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric == name and ",".join(sorted(rest.rstrip("}").split(","))) == want:
            return float(value)
    return None


# (metric, labels, want) after run A
METRICS = [
    ("filterd_messages_total", {"endpoint": "proxy", "action": "accept", "reason": "accepted"}, 3),
    ("filterd_messages_total", {"endpoint": "proxy", "action": "reject", "reason": "virus"}, 3),
    ("filterd_messages_total", {"endpoint": "proxy", "action": "reject", "reason": "smuggling"}, 1),
    ("filterd_viruses_total", {"endpoint": "proxy", "virus": EICAR_NAME}, 2),
    ("filterd_viruses_total", {"endpoint": "proxy", "virus": SECOND_NAME}, 1),
    ("filterd_findings_total", {"endpoint": "proxy", "finding": "fake_end_of_data"}, 1),
    ("filterd_scan_seconds_count", {"endpoint": "proxy"}, 6),  # the smuggled one is not scanned
    ("filterd_sessions_open", {"endpoint": "proxy"}, 0),
    ("filterd_content_budget_bytes", {"kind": "in_use"}, 0),
    ("filterd_content_budget_bytes", {"kind": "limit"}, 256 * 1024 * 1024),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "labels", "want"), METRICS, ids=[f"{m[0]}-{'-'.join(m[1].values())}" for m in METRICS]
)
def test_metrics_count_real_messages(
    run: Run, name: str, labels: dict[str, str], want: float
) -> None:
    assert sample(run.metrics, name, **labels) == want, run.metrics


def test_the_scanner_failures_are_warnings_in_syslog_form(run: Run) -> None:
    messages = [json.loads(d.split(": ", 1)[1]) for d in run.syslog if '"message"' in d]
    assert [(m["level"], m["reason"]) for m in messages] == [("warning", "scan_error")] * 2
    assert all(d.startswith("<20>filterd[") for d in run.syslog if '"message"' in d)


def test_the_message_lines_name_the_clamd_that_answered(run: Run, clamd: Clamd) -> None:
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    messages = [line for line in lines if line.get("event") == "message"]
    # Run A in order: six scanned (clean, EICAR, the second sample), then the smuggled
    # message, refused by its framing with no scan, so no clamd field.
    assert [m.get("clamd") for m in messages] == [clamd.address] * 6 + [None]


def mail_log(run: Run) -> list[str]:
    """What /var/log/mail.log would hold: Postfix's lines, run A's JSON, run B's syslog lines
    with the timestamp and host rsyslog puts before the tag."""
    syslog = ["Dec  1 23:11:00 mx " + d.split(">", 1)[1] for d in run.syslog]
    return [*POSTFIX_LINES, *run.stderr.splitlines(), *syslog]


def filterd_report(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "filterd.cli", "report", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_report_counts_a_real_run(run: Run, tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("\n".join(mail_log(run)) + "\n")
    done = filterd_report("--json", str(log))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["skipped"] == len(POSTFIX_LINES)
    assert got["messages"] == len(RUN_A) + len(RUN_B)
    assert got["by_action"] == {"accept": 3, "reject": 4, "tempfail": 2}
    assert got["by_endpoint"] == {"proxy": {"accept": 3, "reject": 4, "tempfail": 2}}
    assert got["by_reason"] == {
        "accept": {"accepted": 3},
        "reject": {"smuggling": 1, "virus": 3},
        "tempfail": {"scan_error": 2},
    }
    assert got["viruses"] == {EICAR_NAME: 2, SECOND_NAME: 1}
    assert got["framing"] == {"smuggling": 1}
    assert got["framing_clients"] == {"127.0.0.1": 1}
    # Run B's scans failed on its one clamd address, which the message line names.
    assert [(e["clamd"], e["count"]) for e in got["scan_errors"]] == [("tcp:127.0.0.1:1", 2)]
    assert got["scan_time"]["max"] >= got["scan_time"]["p95"] >= got["scan_time"]["median"] > 0
    assert sum(got["hours"].values()) == len(RUN_A) + len(RUN_B)


def test_report_text_from_stdin_and_gzip(run: Run, tmp_path: Path) -> None:
    text = "\n".join(mail_log(run)) + "\n"
    packed = tmp_path / "mail.log.1.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    from_stdin = filterd_report(stdin=text)
    from_gzip = filterd_report(str(packed))
    assert from_stdin.returncode == from_gzip.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_gzip.stdout
    assert "       9  total" in from_stdin.stdout
    assert f"       2  {EICAR_NAME}" in from_stdin.stdout


def test_report_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    done = filterd_report(str(tmp_path / "nope.log"))
    assert done.returncode == 2
    assert done.stderr == f"filterd report: {tmp_path / 'nope.log'}: No such file or directory\n"


def test_every_field_of_a_real_run_is_documented(run: Run) -> None:
    """docs/reference/log-fields.md covers what a real run writes, not only what the code says."""
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    lines += [json.loads(d.split(": ", 1)[1]) for d in run.syslog]
    message_fields = test_log_fields.documented("The message line")
    common = test_log_fields.documented("Fields of every line")
    events = {e.event for e in test_log_fields.events()}
    for line in lines:
        if line["event"] == "message":
            assert set(line) - common <= message_fields, line
        else:
            assert line["event"] in events, line
    assert {line["event"] for line in lines} >= {"message", "listening", "stopped"}
