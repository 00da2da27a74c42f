"""`filterd doctor` against real Postfix configuration directories, read by the real postconf.

Each configuration is written the way the test bed writes a private Postfix's
(tests/testbed/postfix.py: render_main_cf, render_master_cf over BASE_MASTER_CF and the
PROXY_SERVICES / PLAIN_SERVICES templates); postconf -c DIR reads a config directory without
a running Postfix, so none is started here. The baseline is hardened the way master.cf.d/
asks; each case then breaks exactly one thing and must get its finding. The documented setups
are rendered from the snippet files in master.cf.d/ as they are at test time.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from filterd.cli import main
from tests.testbed.common import require_programs
from tests.testbed.postfix import (
    BASE_MASTER_CF,
    PLAIN_SERVICES,
    POSTCONF,
    PROXY_SERVICES,
    render_main_cf,
    render_master_cf,
    render_options,
)

REPO = Path(__file__).resolve().parents[2]
SNIPPETS = REPO / "master.cf.d"

MAIN_CF = {
    "compatibility_level": "3.6",
    "myhostname": "doctor.example.test",
    "mydomain": "example.test",
    "mydestination": "",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mynetworks": "127.0.0.0/8",
    "smtpd_relay_restrictions": "permit_mynetworks, reject",
}
FRONT_HARDENED = {
    "smtpd_forbid_bare_newline": "normalize",
    "smtpd_forbid_bare_newline_exclusions": "",
    "smtpd_forbid_unauth_pipelining": "yes",
}
REINJECTION_HARDENED = {
    "smtpd_forbid_bare_newline": "reject",
    "smtpd_forbid_bare_newline_exclusions": "",
    "smtpd_forbid_unauth_pipelining": "yes",
}
CLAMD_CONF = """\
LocalSocket /run/clamav/clamd.ctl
MaxThreads 12
StreamMaxLength 25M
MaxFileSize 25M
MaxScanSize 100M
AlertExceedsMax yes
"""
PROXY_TOML = '[proxy]\nlisten = "127.0.0.1:10024"\ndownstream = "127.0.0.1:10025"\n'
MILTER_TOML = '[milter]\nlisten = "inet:127.0.0.1:10026"\n'


@pytest.fixture(autouse=True)
def _postconf() -> None:
    require_programs(POSTCONF)


def write_config(
    directory: Path, services: str, values: dict[str, object], main_cf: dict[str, str]
) -> Path:
    """A config directory as the test bed writes one (main.cf, master.cf), backdated.

    Postfix re-reads a file modified within the last second and pauses 300 ms each time
    (tests/testbed/postfix.py explains it): backdating keeps every postconf run fast.
    """
    etc = directory / "etc"
    etc.mkdir()
    settings = {**MAIN_CF, "queue_directory": str(directory / "spool"), **main_cf}
    files = {
        "main.cf": render_main_cf(settings),
        "master.cf": render_master_cf(services, values, BASE_MASTER_CF),
    }
    past = time.time() - 60
    for name, text in files.items():
        path = etc / name
        path.write_text(text)
        os.utime(path, (past, past))
    return etc


@dataclass
class Doctor:
    """One `filterd doctor` run: its exit status and what it printed."""

    code: int
    out: str
    err: str

    @functools.cached_property
    def document(self) -> dict[str, Any]:
        """The --json report, parsed once."""
        parsed: dict[str, Any] = json.loads(self.out)
        return parsed

    def findings(self, least: str = "info") -> set[tuple[str, str, str]]:
        ranks = ["info", "warning", "error"]
        return {
            (f["check"], f["severity"], f["where"])
            for f in self.document["findings"]
            if ranks.index(f["severity"]) >= ranks.index(least)
        }


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> Doctor:
    capsys.readouterr()
    code = main(["doctor", *args])
    captured = capsys.readouterr()
    return Doctor(code, captured.out, captured.err)


@dataclass
class Setup:
    """One configuration: a proxy or milter layout, plus the one change under test."""

    mode: str = "proxy"
    front: dict[str, str] = field(default_factory=dict)
    downstream: dict[str, str] = field(default_factory=dict)
    main_cf: dict[str, str] = field(default_factory=dict)
    toml: str = ""
    clamd: str = CLAMD_CONF
    filter_port: int = 10024
    downstream_name: str = "127.0.0.1:{downstream_port}"
    drop: tuple[str, ...] = ()  # front overrides of the hardened baseline to leave out

    def write(self, tmp_path: Path) -> list[str]:
        if self.mode == "proxy":
            services = PROXY_SERVICES.replace("127.0.0.1:{downstream_port}", self.downstream_name)
            toml = self.toml or PROXY_TOML
            front = {**FRONT_HARDENED, **self.front}
        else:
            services = PLAIN_SERVICES
            toml = self.toml or MILTER_TOML
            front = {"smtpd_milters": "inet:127.0.0.1:10026", **FRONT_HARDENED, **self.front}
        front = {k: v for k, v in front.items() if k not in self.drop}
        values = {
            "smtpd_port": 2525,
            "filter_port": self.filter_port,
            "downstream_port": 10025,
            "front_options": render_options(front),
            "downstream_options": render_options({**REINJECTION_HARDENED, **self.downstream}),
        }
        etc = write_config(tmp_path, services, values, self.main_cf)
        (tmp_path / "filterd.toml").write_text(toml)
        (tmp_path / "clamd.conf").write_text(self.clamd)
        return [
            "-c",
            str(etc),
            "--config",
            str(tmp_path / "filterd.toml"),
            "--clamd-config",
            str(tmp_path / "clamd.conf"),
            "--json",
        ]


FRONT = "127.0.0.1:2525/inet"
REINJECT = "127.0.0.1:10025/inet"

# (case id, configuration, the finding it must produce)
BROKEN = [
    ("bare-newline-no", Setup(front={"smtpd_forbid_bare_newline": "no"}),
     ("bare-newline", "error", FRONT)),
    ("exclusions-default-mynetworks", Setup(drop=("smtpd_forbid_bare_newline_exclusions",)),
     ("bare-newline-exclusions", "error", FRONT)),
    ("exclusions-on-reinjection",
     Setup(downstream={"smtpd_forbid_bare_newline_exclusions": "$mynetworks"}),
     ("bare-newline-exclusions", "warning", REINJECT)),
    ("unauth-pipelining-default", Setup(front={"smtpd_forbid_unauth_pipelining": "no"}),
     ("unauth-pipelining", "warning", FRONT)),
    ("old-postfix", Setup(main_cf={"mail_version": "3.7.8"}),
     ("postfix-version", "error", "main.cf")),
    ("postfix-yes-no-only", Setup(main_cf={"mail_version": "3.8.4"}),
     ("postfix-version", "warning", "main.cf")),
    ("proxy-filter-elsewhere", Setup(filter_port=10099),
     ("proxy-filter", "error", FRONT)),
    ("proxy-timeout-short", Setup(front={"smtpd_proxy_timeout": "60s"}),
     ("proxy-timeout", "error", FRONT)),
    ("process-limit", Setup(toml=PROXY_TOML + "max_connections = 50\n"),
     ("process-limit", "warning", FRONT)),
    ("reinjection-missing", Setup(toml=PROXY_TOML.replace("10025", "10027")),
     ("reinjection-missing", "error", "main.cf")),
    ("reinjection-all-interfaces",
     Setup(downstream_name="{downstream_port}", main_cf={"inet_interfaces": "all"}),
     ("reinjection-exposed", "error", "10025/inet")),
    ("reinjection-proxy-loop", Setup(downstream={"smtpd_proxy_filter": "127.0.0.1:10024"}),
     ("reinjection-override", "error", REINJECT)),
    ("reinjection-milters", Setup(downstream={"smtpd_milters": "inet:127.0.0.1:8891"}),
     ("reinjection-override", "warning", REINJECT)),
    ("reinjection-xforward-wide",
     Setup(downstream={"smtpd_authorized_xforward_hosts": "0.0.0.0/0"}),
     ("reinjection-xforward", "warning", REINJECT)),
    ("reinjection-open",
     Setup(downstream={"smtpd_recipient_restrictions": "permit_mynetworks,permit"}),
     ("reinjection-restrictions", "warning", REINJECT)),
    ("message-size-above-filterd", Setup(main_cf={"message_size_limit": "52428800"}),
     ("message-size", "warning", FRONT)),
    ("milter-missing", Setup(mode="milter", front={"smtpd_milters": "inet:127.0.0.1:8891"}),
     ("milters", "error", FRONT)),
    ("milter-fail-open", Setup(mode="milter", main_cf={"milter_default_action": "accept"}),
     ("milter-default-action", "error", FRONT)),
    (
        "milter-fail-open-per-milter",
        Setup(
            mode="milter",
            front={"smtpd_milters": "{ inet:127.0.0.1:10026, default_action=accept }"},
        ),
        ("milter-default-action", "error", FRONT),
    ),
    ("milter-content-timeout", Setup(mode="milter", front={"milter_content_timeout": "10s"}),
     ("milter-timeout", "error", FRONT)),
    ("clamd-socket", Setup(clamd=CLAMD_CONF.replace("/run/clamav/", "/srv/clamav/")),
     ("clamd-address", "error", "clamd")),
    ("clamd-stream-length",
     Setup(clamd=CLAMD_CONF.replace("StreamMaxLength 25M", "StreamMaxLength 10M")),
     ("clamd-stream-size", "error", "clamd")),
    ("clamd-threads", Setup(clamd=CLAMD_CONF.replace("MaxThreads 12", "MaxThreads 4")),
     ("clamd-threads", "warning", "clamd")),
    ("clamd-alert-exceeds-max",
     Setup(clamd=CLAMD_CONF.replace("AlertExceedsMax yes", "AlertExceedsMax no")),
     ("clamd-exceeds-max", "error", "clamd")),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["proxy", "milter"])
def test_hardened_baseline_is_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    got = doctor(capsys, *Setup(mode=mode).write(tmp_path))
    assert got.code == 0, got.out
    assert got.findings("warning") == set()
    assert got.document["postfix"]["version"] == "3.7.11"


@pytest.mark.parametrize(("case_id", "setup", "want"), BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_configuration_is_found(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case_id: str,
    setup: Setup,
    want: tuple[str, str, str],
) -> None:
    got = doctor(capsys, *setup.write(tmp_path))
    assert want in got.findings(), (case_id, got.findings())
    assert got.code == 1


def test_fix_lines_fix_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run the printed fix lines against the config directory: the findings go away."""
    setup = Setup(front={"smtpd_forbid_bare_newline": "no", "smtpd_proxy_timeout": "60s"})
    args = setup.write(tmp_path)
    before = doctor(capsys, *args)
    fixes = [f["fix"] for f in before.document["findings"] if f["fix"].startswith("postconf")]
    assert len(fixes) == 2, fixes
    for line in fixes:
        assert os.system(line.replace("postconf", POSTCONF, 1)) == 0, line  # noqa: S605
    for path in (tmp_path / "etc").iterdir():
        os.utime(path, (time.time() - 60, time.time() - 60))
    after = doctor(capsys, *args)
    assert after.code == 0, after.out


def test_text_report_names_each_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = Setup(front={"smtpd_forbid_bare_newline": "no"}).write(tmp_path)
    got = doctor(capsys, *[a for a in args if a != "--json"])
    assert got.code == 1
    assert f"{FRONT}\n  error    bare-newline:" in got.out
    assert f"{REINJECT}\n  ok" in got.out
    assert f"postconf -c {tmp_path / 'etc'} -P '{FRONT}/smtpd_forbid_bare_newline=normalize'" in (
        got.out
    )
    assert got.out.rstrip().endswith("exit 1")


def test_text_report_lists_every_clamd_of_a_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = '[clamd]\naddress = ["unix:/run/clamav/clamd.ctl", "tcp:10.0.5.11:3310"]\n'
    args = Setup(toml=PROXY_TOML + pool).write(tmp_path)
    text = doctor(capsys, *[a for a in args if a != "--json"]).out
    assert "\nclamd: unix:/run/clamav/clamd.ctl, tcp:10.0.5.11:3310\n" in text
    assert "clamd-remote: [clamd] address tcp:10.0.5.11:3310 is another host" in text
    got = json.loads(doctor(capsys, *args).out)
    assert got["filterd"]["clamd"] == ["unix:/run/clamav/clamd.ctl", "tcp:10.0.5.11:3310"]


# --- the documented setups, from master.cf.d/ as it is now ---------------------------------


def front_entry(snippet: str) -> str:
    """The snippet's `smtp inet` entry: its service line and the -o lines that follow it."""
    lines = snippet.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("smtp "))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith((" ", "\t")):
            break
        entry.append(line)
    return "\n".join(entry)


EMPTY_EXCLUSIONS = "  -o smtpd_forbid_bare_newline_exclusions="


def front_lacks_empty_exclusions(snippet: str) -> bool:
    return EMPTY_EXCLUSIONS.strip() not in (
        line.strip() for line in front_entry(snippet).splitlines()
    )


def without_front_exclusions(snippet: str) -> str:
    """The snippet with the front smtpd's empty exclusions line taken out (the state of
    master.cf.d/ before issue 10): the default, $mynetworks, is excluded again."""
    front = front_entry(snippet)
    kept = "\n".join(
        line for line in front.splitlines() if line.strip() != EMPTY_EXCLUSIONS.strip()
    )
    assert kept != front, "the snippet's front smtpd has no empty exclusions line to take out"
    return snippet.replace(front, kept, 1)


DOCUMENTED = [("proxy.cf", PROXY_TOML), ("milter.cf", MILTER_TOML)]


def documented_args(tmp_path: Path, snippet: str, toml: str) -> list[str]:
    etc = write_config(tmp_path, snippet, {}, {})
    (tmp_path / "filterd.toml").write_text(toml)
    (tmp_path / "clamd.conf").write_text(CLAMD_CONF)
    args = ["-c", str(etc), "--config", str(tmp_path / "filterd.toml")]
    return [*args, "--clamd-config", str(tmp_path / "clamd.conf"), "--json"]


@pytest.mark.parametrize(("snippet_name", "toml"), DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_documented_setup_is_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet_name: str, toml: str
) -> None:
    snippet = (SNIPPETS / snippet_name).read_text()
    assert not front_lacks_empty_exclusions(snippet), "the $mynetworks hole is back"
    got = doctor(capsys, *documented_args(tmp_path, snippet, toml))
    assert got.findings("warning") == set(), got.out
    assert got.code == 0


@pytest.mark.parametrize(("snippet_name", "toml"), DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_snippet_without_the_exclusions_line_has_only_that_hole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet_name: str, toml: str
) -> None:
    """The documented snippet minus its front smtpd's empty exclusions line: the doctor
    reports that hole on the front smtpd, and nothing else at warning level or above."""
    snippet = without_front_exclusions((SNIPPETS / snippet_name).read_text())
    assert front_lacks_empty_exclusions(snippet)
    got = doctor(capsys, *documented_args(tmp_path, snippet, toml))
    assert got.findings("warning") == {("bare-newline-exclusions", "error", "smtp/inet")}, got.out
    assert got.code == 1


# --- could not run: exit 2, one line, no traceback -------------------------------------------


def test_missing_postconf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = Setup().write(tmp_path)
    got = doctor(capsys, *args, "--postconf", str(tmp_path / "no-postconf"))
    assert (got.code, got.out) == (2, "")
    assert got.err.startswith("filterd doctor: ")
    assert len(got.err.splitlines()) == 1


@pytest.mark.parametrize(
    ("case_id", "change"),
    [
        ("no-config-dir", lambda args, tmp: [*args[:1], str(tmp / "nowhere"), *args[2:]]),
        ("bad-toml", lambda args, tmp: (tmp / "filterd.toml").write_text("[proxy\n") and args),
        (
            "unknown-key",
            lambda args, tmp: (tmp / "filterd.toml").write_text("[proxy]\nx=1\n") and args,
        ),
        ("no-clamd-conf", lambda args, tmp: [*args[:5], str(tmp / "none.conf"), *args[6:]]),
    ],
)
def test_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case_id: str, change: Any
) -> None:
    args = change(Setup().write(tmp_path), tmp_path)
    got = doctor(capsys, *args)
    assert got.code == 2, (case_id, got.out)
    assert got.out == ""
    assert len(got.err.splitlines()) == 1
    assert "Traceback" not in got.err
