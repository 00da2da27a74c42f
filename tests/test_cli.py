"""The `filterd` command itself: version, help, and refusing to serve nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from filterd import __version__, config

# Hermetic: an /etc/filterd/filterd.toml on this machine must not change what the tests see.
NO_DEFAULT_FILE = {**os.environ, config.PATH_VARIABLE: "/nonexistent/filterd.toml"}


def filterd(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "filterd.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False, env=NO_DEFAULT_FILE
    )


def test_version() -> None:
    got = filterd("--version")
    assert got.stdout.strip() == f"filterd {__version__}"
    assert got.returncode == 0


def test_no_command_prints_help() -> None:
    got = filterd()
    assert got.returncode == 2
    for name in ("serve", "check-config", "scan", "smuggle"):
        assert name in got.stderr


def test_serve_without_endpoint_says_so() -> None:
    got = filterd("serve")
    assert got.returncode == 2
    assert "no endpoint configured" in got.stderr


def test_serve_with_bad_clamd_address_names_it() -> None:
    got = filterd("serve", "--proxy", "127.0.0.1:1", "--clamd", "nonsense")
    assert got.returncode == 2
    assert "nonsense" in got.stderr


def test_a_milter_flag_without_inet_names_the_key() -> None:
    """A flag is checked like the key it overrides, in the same one line."""
    got = filterd("serve", "--milter", "127.0.0.1:10031")
    assert got.returncode == 2
    want = "filterd serve: milter.listen: '127.0.0.1:10031' is not inet:HOST:PORT or unix:PATH\n"
    assert got.stderr == want
