"""Every bad setting is ONE line, `section.key: VALUE is not ALLOWED`, exit 2, no traceback.

The table gives each case's exact message (got/want), so the wording stays uniform across
keys; the subprocess tests run `filterd serve` and `filterd check-config` on some of them.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from filterd import check_cli, config
from tests.tables import cases

# (id, TOML text, the exact message)
CASES = [
    ("clamd-max-concurrent-zero", "[clamd]\nmax_concurrent = 0",
     "clamd.max_concurrent: 0 is not an integer > 0"),
    ("clamd-max-scan-size-negative", "[clamd]\nmax_scan_size = -1",
     "clamd.max_scan_size: -1 is not an integer > 0"),
    ("clamd-timeout-zero", "[clamd]\nreply_timeout = 0",
     "clamd.reply_timeout: 0 is not a number > 0"),
    ("clamd-address", '[clamd]\naddress = "/run/clamav/clamd.ctl"',
     "clamd.address: '/run/clamav/clamd.ctl' is not unix:PATH or tcp:HOST:PORT"),
    ("clamd-address-port", '[clamd]\naddress = "tcp:127.0.0.1"',
     "clamd.address: 'tcp:127.0.0.1' is not unix:PATH or tcp:HOST:PORT (expected tcp:HOST:PORT)"),
    ("filter-infected-word", '[filter]\ninfected = "bounce"',
     "filter.infected: 'bounce' is not one of 'reject', 'tempfail', 'discard', 'accept'"),
    ("filter-infected-quarantine", '[filter]\ninfected = "quarantine"',
     ("filter.infected: 'quarantine' is not one of 'reject', 'tempfail', 'discard', 'accept' "
     "(quarantine: in [milter] infected only)")),
    ("filter-oversize-word", '[filter]\noversize = "drop"',
     "filter.oversize: 'drop' is not one of 'tempfail', 'accept'"),
    ("filter-bare-newline-word", '[filter]\nforbid_bare_newline = "strict"',
     "filter.forbid_bare_newline: 'strict' is not one of 'normalize', 'note', 'reject', 'no'"),
    ("filter-reject-code", "[filter]\nbare_newline_reject_code = 450",
     "filter.bare_newline_reject_code: 450 is not an integer from 500 to 599"),
    ("filter-size-zero", "[filter]\nmax_message_size = 0",
     "filter.max_message_size: 0 is not an integer >= 1"),
    ("proxy-deadline-zero", "[proxy]\nreply_deadline = 0",
     "proxy.reply_deadline: 0 is not a number > 0"),
    ("proxy-stress-threshold", "[proxy]\nstress_threshold = 2",
     "proxy.stress_threshold: 2 is not a number > 0, <= 1"),
    ("proxy-line-length", "[proxy]\nmax_line_length = 100",
     "proxy.max_line_length: 100 is not an integer >= 512"),
    ("proxy-xforward-old-string", '[proxy]\nxforward_hosts = "127.0.0.0/8 ::1/128"',
     ("proxy.xforward_hosts: '127.0.0.0/8 ::1/128' is not a list; write a TOML list: "
     'xforward_hosts = ["127.0.0.0/8", "::1/128"]')),
    ("proxy-xforward-network", '[proxy]\nxforward_hosts = ["127.0.0.0/33"]',
     "proxy.xforward_hosts: '127.0.0.0/33' is not a network such as 192.0.2.0/24"),
    ("proxy-listen-no-port", '[proxy]\nlisten = "127.0.0.1"',
     "proxy.listen: '127.0.0.1' is not HOST:PORT (expected HOST:PORT)"),
    ("milter-listen-no-inet", '[milter]\nlisten = "127.0.0.1:10031"',
     "milter.listen: '127.0.0.1:10031' is not inet:HOST:PORT or unix:PATH"),
    ("milter-socket-group", '[milter]\nsocket_group = "no-such-group"',
     "milter.socket_group: 'no-such-group' is not a group on this host"),
    ("milter-infected-word", '[milter]\ninfected = "bounce"',
     ("milter.infected: 'bounce' is not one of '', 'reject', 'tempfail', 'discard', "
     "'quarantine', 'accept'")),
    ("milter-bypass-string", '[milter]\nbypass_networks = "10.0.0.0/8"',
     ("milter.bypass_networks: '10.0.0.0/8' is not a list; write a TOML list: "
     'bypass_networks = ["10.0.0.0/8"]')),
    ("milter-bypass-number", "[milter]\nbypass_networks = [1]",
     "milter.bypass_networks: 1 is not a string"),
    ("milter-drain-negative", "[milter]\ndrain_timeout = -1",
     "milter.drain_timeout: -1 is not a number >= 0"),
    ("log-level", '[log]\nlevel = "loud"',
     "log.level: 'loud' is not one of 'debug', 'info', 'warning', 'error'"),
    ("server-bool", '[server]\nallow_non_loopback = "yes"',
     "server.allow_non_loopback: 'yes' is not true or false"),
    ("wrong-type", "[clamd]\nmax_concurrent = '10'",
     "clamd.max_concurrent: '10' is not an integer"),
    ("unknown-key", "[clamd]\nmax_threads = 10",
     ("clamd.max_threads: unknown key; known: address, max_scan_size, max_concurrent, "
     "connect_timeout, io_timeout, reply_timeout, queue_timeout, deadline, health_interval, "
     "health_backoff_max, session_idle")),
    ("not-a-table", "clamd = 1", "clamd: 1 is not a table; write [clamd] and its keys below it"),
    # inf and nan are TOML floats: refused by every range helper, shown as TOML writes them.
    ("proxy-deadline-inf", "[proxy]\nreply_deadline = inf",
     "proxy.reply_deadline: inf is not a finite number > 0"),
    ("clamd-timeout-nan", "[clamd]\nqueue_timeout = nan",
     "clamd.queue_timeout: nan is not a finite number > 0"),
    ("proxy-greet-pause-inf", "[proxy]\ngreet_pause = inf",
     "proxy.greet_pause: inf is not a finite number >= 0"),
    ("milter-drain-nan", "[milter]\ndrain_timeout = -nan",
     "milter.drain_timeout: nan is not a finite number >= 0"),
    ("proxy-stress-threshold-nan", "[proxy]\nstress_threshold = nan",
     "proxy.stress_threshold: nan is not a number > 0, <= 1"),
    ("proxy-deadline-fraction", "[proxy]\nreply_deadline = -0.5",
     "proxy.reply_deadline: -0.5 is not a number > 0"),
    ("clamd-max-concurrent-bool", "[clamd]\nmax_concurrent = true",
     "clamd.max_concurrent: true is not an integer"),
    ("server-workers-bool", "[server]\nworkers = false",
     "server.workers: false is not an integer"),
    ("proxy-max-errors-float", "[proxy]\nmax_errors = 2.5",
     "proxy.max_errors: 2.5 is not an integer"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "want"), cases(CASES))
def test_message(tmp_path: Path, text: str, want: str) -> None:
    path = tmp_path / "filterd.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    got = str(caught.value)
    assert got == want, f"got {got!r}, want {want!r}"


def float_keys() -> list[tuple[str, str]]:
    """(section, key) of every float setting of every section."""
    found = []
    for section in dataclasses.fields(config.Config):
        hints = typing.get_type_hints(typing.get_type_hints(config.Config)[section.name])
        found += [(section.name, key) for key, hint in hints.items() if hint is float]
    return found


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize(
    ("section", "key"), float_keys(), ids=[f"{s}.{k}" for s, k in float_keys()]
)
def test_no_float_key_takes_a_non_finite_value(section: str, key: str, value: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.from_mapping(tomllib.loads(f"[{section}]\n{key} = {value}"))
    got = str(caught.value)
    want = f"{section}.{key}: {value} is not "
    assert got.startswith(want), f"got {got!r}, want {want!r}..."


def test_every_section_has_float_keys_counted() -> None:
    assert len(float_keys()) >= 15  # clamd, proxy, milter: the table above is not empty


# (id, facts from Postfix and clamd, [proxy]/[clamd] table, exact problems)
CROSS = [
    ("all-fit", check_cli.Facts(100.0, 26214400), {}, []),
    ("unknown", check_cli.Facts(None, None), {"proxy": {"reply_deadline": 500}}, []),
    ("deadline-over-proxy-timeout", check_cli.Facts(100.0, None),
     {"proxy": {"reply_deadline": 500}},
     [("proxy.reply_deadline: 500 is not below Postfix's smtpd_proxy_timeout (100s): Postfix "
      "would give up first and the sender retry a message already relayed")]),
    ("deadline-equal", check_cli.Facts(90.0, None), {},
     [("proxy.reply_deadline: 90 is not below Postfix's smtpd_proxy_timeout (90s): Postfix "
      "would give up first and the sender retry a message already relayed")]),
    ("scan-size-over-stream-max", check_cli.Facts(None, 1048576), {},
     [("clamd.max_scan_size: 26214400 is not at most clamd's StreamMaxLength (1048576): clamd "
      "would refuse the larger messages (INSTREAM size limit exceeded)")]),
    ("stream-unlimited", check_cli.Facts(None, 0), {}, []),
    ("threads-fit", check_cli.Facts(None, None, 10), {"server": {"workers": 1}}, []),
    ("threads-over", check_cli.Facts(None, None, 8), {"server": {"workers": 1}},
     [("clamd.max_concurrent: 10 is not at most clamd's MaxThreads (8): clamd would queue the "
       "other scans and their wait would count against reply_timeout")]),
    ("threads-shared-by-workers", check_cli.Facts(None, None, 10),
     {"clamd": {"max_concurrent": 10}, "server": {"workers": 4}}, []),
    ("threads-one-slot-each", check_cli.Facts(None, None, 3),
     {"clamd": {"max_concurrent": 2}, "server": {"workers": 4}},
     [("clamd.max_concurrent: 2 over 4 workers (4 scans per clamd at once) is not at most "
       "clamd's MaxThreads (3): clamd would queue the other scans and their wait would count "
       "against reply_timeout")]),
    ("threads-unknown", check_cli.Facts(None, None, None),
     {"clamd": {"max_concurrent": 500}, "server": {"workers": 1}}, []),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "data", "want"), cases(CROSS))
def test_cross_check(
    facts: check_cli.Facts, data: dict[str, dict[str, int]], want: list[str]
) -> None:
    got = check_cli.cross_check(config.from_mapping(data), facts)
    assert got == want


def test_stream_max_length_only_for_the_clamd_it_describes(tmp_path: Path) -> None:
    conf = tmp_path / "clamd.conf"
    conf.write_text("LocalSocket /run/clamav/clamd.ctl\nStreamMaxLength 10M\n")
    ours = config.Config()
    other = config.from_mapping({"clamd": {"address": "unix:/tmp/other.ctl"}})
    assert check_cli.gather(ours, clamd_conf=str(conf)).stream_max_length == 10 * 1024 * 1024
    assert check_cli.gather(other, clamd_conf=str(conf)).stream_max_length is None


# (id, clamd.conf text, the MaxThreads gathered)
MAX_THREADS = [
    ("set", "LocalSocket /run/clamav/clamd.ctl\nMaxThreads 4\n", 4),
    ("default", "LocalSocket /run/clamav/clamd.ctl\n", 10),  # clamd.conf(5)
    ("other-clamd", "LocalSocket /tmp/other.ctl\nMaxThreads 4\n", None),
    ("unreadable-value", "LocalSocket /run/clamav/clamd.ctl\nMaxThreads many\n", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "want"), cases(MAX_THREADS))
def test_max_threads_of_the_clamd_described(tmp_path: Path, text: str, want: int | None) -> None:
    conf = tmp_path / "clamd.conf"
    conf.write_text(text)
    got = check_cli.gather(config.Config(), clamd_conf=str(conf)).max_threads
    assert got == want


def test_proxy_timeout_from_postconf(tmp_path: Path) -> None:
    """Read from a private Postfix configuration directory (postconf -c DIR)."""
    (tmp_path / "main.cf").write_text("smtpd_proxy_timeout = 2m\n")
    if check_cli.gather(config.Config(), postconf_dir=str(tmp_path)).smtpd_proxy_timeout is None:
        pytest.skip("postconf is not installed")
    assert check_cli.gather(config.Config(), postconf_dir=str(tmp_path)).smtpd_proxy_timeout == 120


def filterd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "filterd.cli", *args]
    # Hermetic: a real /etc/filterd/filterd.toml must not change what the tests see.
    environment = {**os.environ, config.PATH_VARIABLE: "/nonexistent/filterd.toml", **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False, env=environment
    )


SUBPROCESS = ["clamd-max-concurrent-zero", "milter-listen-no-inet", "milter-socket-group",
              "filter-infected-word", "proxy-xforward-old-string"]  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize("case", SUBPROCESS)
def test_one_line_and_exit_2(tmp_path: Path, command: str, case: str) -> None:
    text, want = next(c[1:] for c in CASES if c[0] == case)
    path = tmp_path / "filterd.toml"
    path.write_text(text)
    got = filterd(command, "--config", str(path))
    assert got.returncode == 2
    assert "Traceback" not in got.stderr
    assert got.stderr.splitlines() == [f"filterd {command}: {want}"]


def test_the_default_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "filterd.toml"
    path.write_text("[clamd]\nmax_concurrent = 0\n")
    got = filterd("check-config", env={config.PATH_VARIABLE: str(path)})
    assert got.returncode == 2
    assert got.stderr == "filterd check-config: clamd.max_concurrent: 0 is not an integer > 0\n"


def test_a_missing_default_file_is_fine(tmp_path: Path) -> None:
    """No file is no error of its own; the defaults then have no endpoint, as serve says."""
    got = filterd("check-config", env={config.PATH_VARIABLE: str(tmp_path / "none.toml")})
    assert got.returncode == 2
    assert got.stderr == f"filterd check-config: {NO_ENDPOINT}\n"


NO_ENDPOINT = "no endpoint configured: set [proxy] listen and/or [milter] listen"

# (id, TOML text, exit status of check-config, its one line ("{path}" is the file))
STARTABLE = [
    ("empty-file", "", 2, f"filterd check-config: {NO_ENDPOINT}"),
    ("listen-emptied", '[proxy]\nlisten = ""\n[milter]\nlisten = ""', 2,
     f"filterd check-config: {NO_ENDPOINT}"),
    ("proxy", '[proxy]\nlisten = "127.0.0.1:0"', 0, "filterd check-config: {path}: OK"),
    ("milter", '[milter]\nlisten = "inet:127.0.0.1:0"', 0, "filterd check-config: {path}: OK"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "status", "line"), cases(STARTABLE))
def test_check_config_refuses_what_serve_refuses(
    tmp_path: Path, text: str, status: int, line: str
) -> None:
    path = tmp_path / "filterd.toml"
    path.write_text(text)
    got = filterd("check-config", "--config", str(path))
    assert (got.returncode, (got.stdout + got.stderr).strip()) == (
        status,
        line.format(path=path),
    )
    if status:  # serve refuses it too, before anything listens
        served = filterd("serve", "--config", str(path), "--workers", "1")
        assert served.returncode == 2
        assert "no endpoint configured" in served.stderr


def test_a_missing_given_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    got = filterd("check-config", "--config", str(missing))
    assert got.returncode == 2
    assert (
        got.stderr == f"filterd check-config: {missing}: cannot read: No such file or directory\n"
    )


def test_deadline_over_postfix_timeout_stops_serve(tmp_path: Path) -> None:
    """Postfix's smtpd_proxy_timeout read through postconf (MAIL_CONFIG, a private main.cf)."""
    (tmp_path / "main.cf").write_text("smtpd_proxy_timeout = 100s\n")
    path = tmp_path / "filterd.toml"
    path.write_text('[proxy]\nlisten = "127.0.0.1:0"\nreply_deadline = 500\n')
    got = filterd("serve", "--config", str(path), env={"MAIL_CONFIG": str(tmp_path)})
    if check_cli.gather(config.Config(), postconf_dir=str(tmp_path)).smtpd_proxy_timeout is None:
        pytest.skip("postconf is not installed")
    assert got.returncode == 2
    assert "Traceback" not in got.stderr
    assert got.stderr.startswith("filterd serve: proxy.reply_deadline: 500 is not below")


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_max_concurrent_over_the_local_max_threads_stops_both(tmp_path: Path, command: str) -> None:
    """Debian's /etc/clamav/clamd.conf describes the default clamd.address."""
    threads = check_cli.gather(config.Config()).max_threads
    if threads is None:
        pytest.skip("no clamd.conf describing unix:/run/clamav/clamd.ctl")
    path = tmp_path / "filterd.toml"
    path.write_text(
        f'[proxy]\nlisten = "127.0.0.1:0"\n[clamd]\nmax_concurrent = {threads + 1}\n'
        "[server]\nworkers = 1\n"
    )
    got = filterd(command, "--config", str(path))
    want = f"filterd {command}: clamd.max_concurrent: {threads + 1} is not at most clamd's "
    assert (got.returncode, got.stderr.startswith(want)) == (2, True), got.stderr
