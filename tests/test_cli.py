"""The `filterd` command itself: version, help, and refusing to serve nothing."""

from __future__ import annotations

import subprocess
import sys

from filterd import __version__


def filterd(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "filterd.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_version() -> None:
    got = filterd("--version")
    assert got.stdout.strip() == f"filterd {__version__}"
    assert got.returncode == 0


def test_no_command_prints_help() -> None:
    got = filterd()
    assert got.returncode == 2
    for name in ("serve", "scan", "smuggle"):
        assert name in got.stderr


def test_serve_without_endpoint_says_so() -> None:
    got = filterd("serve")
    assert got.returncode == 2
    assert "no endpoint configured" in got.stderr


def test_serve_with_bad_clamd_address_names_it() -> None:
    got = filterd("serve", "--proxy", "127.0.0.1:1", "--clamd", "nonsense")
    assert got.returncode == 2
    assert "nonsense" in got.stderr
