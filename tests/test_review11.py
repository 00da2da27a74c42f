"""Defects found by the issue-11 review (a mail administrator's run of the install), each
with the case that failed before its fix."""

from __future__ import annotations

from pathlib import Path

from filterd import check_cli, config


def test_debian_clamd_conf_var_run_socket_is_the_default_address(tmp_path: Path) -> None:
    """Debian's clamd.conf says LocalSocket /var/run/clamav/clamd.ctl; filterd's default is
    unix:/run/clamav/clamd.ctl: the same socket (/var/run -> /run), so the check applies."""
    conf = tmp_path / "clamd.conf"
    conf.write_text("LocalSocket /var/run/clamav/clamd.ctl\nStreamMaxLength 10M\n")
    got = check_cli.gather(config.Config(), clamd_conf=str(conf)).stream_max_length
    assert got == 10 * 1024 * 1024
