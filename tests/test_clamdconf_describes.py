"""Which clamd a clamd.conf describes (filterd/doctor/clamdconf.py `describes`), the one rule
`filterd check-config` / `serve` (check_cli: whose StreamMaxLength and MaxThreads count) and
`filterd doctor` (limits: the clamd-address finding) both use.

A TCP address matches on its port and its host: the same port on another host is another
clamd, about which the local clamd.conf says nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd import check_cli, config
from filterd.doctor.clamdconf import describes, parse
from filterd.scan.address import parse_address
from tests.tables import cases

# (id, clamd.conf text, [clamd] address, described)
DESCRIBES = [
    ("socket-same", "LocalSocket /run/clamav/clamd.ctl\n", "unix:/run/clamav/clamd.ctl", True),
    ("socket-var-run", "LocalSocket /var/run/clamav/clamd.ctl\n",
     "unix:/run/clamav/clamd.ctl", True),
    ("socket-other", "LocalSocket /run/clamav/clamd.ctl\n", "unix:/tmp/clamd.ctl", False),
    ("socket-none", "TCPSocket 3310\n", "unix:/run/clamav/clamd.ctl", False),
    ("tcp-no-socket", "LocalSocket /run/clamav/clamd.ctl\n", "tcp:127.0.0.1:3310", False),
    ("tcp-any-loopback", "TCPSocket 3310\n", "tcp:127.0.0.1:3310", True),
    ("tcp-any-localhost", "TCPSocket 3310\n", "tcp:localhost:3310", True),
    ("tcp-any-ipv6-loopback", "TCPSocket 3310\n", "tcp:[::1]:3310", True),
    ("tcp-other-port", "TCPSocket 3310\n", "tcp:127.0.0.1:3311", False),
    ("tcp-other-host-any", "TCPSocket 3310\n", "tcp:10.0.5.11:3310", False),
    ("tcp-other-host-listed", "TCPSocket 3310\nTCPAddr 10.0.5.12\n", "tcp:10.0.5.11:3310", False),
    ("tcp-other-host-loopback-listed", "TCPSocket 3310\nTCPAddr 127.0.0.1\n",
     "tcp:10.0.5.11:3310", False),
    ("tcp-listed-host", "TCPSocket 3310\nTCPAddr 10.0.5.11\n", "tcp:10.0.5.11:3310", True),
    ("tcp-listed-host-case", "TCPSocket 3310\nTCPAddr Clamd.Example\n",
     "tcp:clamd.example:3310", True),
    ("tcp-second-listed", "TCPSocket 3310\nTCPAddr 127.0.0.1\nTCPAddr 10.0.5.11\n",
     "tcp:10.0.5.11:3310", True),
    ("tcp-loopback-other-loopback", "TCPSocket 3310\nTCPAddr 127.0.0.1\n",
     "tcp:127.0.0.2:3310", True),
    ("tcp-loopback-not-listened", "TCPSocket 3310\nTCPAddr 10.0.5.11\n",
     "tcp:127.0.0.1:3310", False),
]  # fmt: skip


@pytest.mark.parametrize(("text", "address", "want"), cases(DESCRIBES))
def test_describes(text: str, address: str, want: bool) -> None:
    got = describes(parse(text, "clamd.conf"), parse_address(address))
    assert got is want


# (id, [clamd] address, the MaxThreads check_cli gathers from a clamd.conf with TCPSocket
# 3310, no TCPAddr and MaxThreads 4)
GATHERED = [
    ("local", "tcp:127.0.0.1:3310", 4),
    ("same-port-another-host", "tcp:10.0.5.11:3310", None),
    ("pool-with-a-local-member", ["tcp:10.0.5.11:3310", "tcp:127.0.0.1:3310"], 4),
]


@pytest.mark.parametrize(("address", "want"), cases(GATHERED))
def test_check_config_reads_only_the_local_clamd(
    tmp_path: Path, address: str | list[str], want: int | None
) -> None:
    conf = tmp_path / "clamd.conf"
    conf.write_text("TCPSocket 3310\nMaxThreads 4\n")
    settings = config.from_mapping({"clamd": {"address": address}})
    assert check_cli.gather(settings, clamd_conf=str(conf)).max_threads == want
