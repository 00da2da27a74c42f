"""The default name: Postfix's myhostname when postconf answers, else this host's FQDN."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from filterd import __version__, config, hostname, pipeline
from filterd.core import Policy
from filterd.doctor import postconf
from filterd.testing import FakeScanner


def require_postconf() -> None:
    try:
        postconf.find_postconf()
    except postconf.PostconfError:
        pytest.skip("postconf is not installed")


def test_myhostname_of_a_postfix_config_dir(tmp_path: Path) -> None:
    """postconf -c DIR, as for the test bed's private Postfix."""
    require_postconf()
    (tmp_path / "main.cf").write_text("myhostname = mx.example.test\n")
    assert hostname.postfix_myhostname(str(tmp_path)) == "mx.example.test"
    assert hostname.default_hostname(str(tmp_path)) == "mx.example.test"


def test_without_main_cf_the_fqdn(tmp_path: Path) -> None:
    """A Postfix installed with "No configuration" has no main.cf: postconf fails."""
    require_postconf()
    assert hostname.postfix_myhostname(str(tmp_path)) is None
    assert hostname.default_hostname(str(tmp_path)) == socket.getfqdn()


def test_without_postconf_the_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object) -> str:
        raise postconf.PostconfError("postconf not found (is Postfix installed?)")

    monkeypatch.setattr(hostname, "run", missing)
    assert hostname.postfix_myhostname() is None
    assert hostname.default_hostname.__wrapped__() == socket.getfqdn()


def test_the_proxy_greets_with_postfix_myhostname(tmp_path: Path) -> None:
    """`filterd serve` with no [proxy] hostname asks the Postfix of MAIL_CONFIG (postconf)."""
    require_postconf()
    (tmp_path / "main.cf").write_text("myhostname = mx.example.test\n")
    environment = {
        **os.environ,
        "MAIL_CONFIG": str(tmp_path),
        config.PATH_VARIABLE: str(tmp_path / "none.toml"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "filterd.cli", "serve", "--proxy", "127.0.0.1:0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        port = listening_port(process)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            greeting = client.recv(512)
        assert greeting.startswith(b"220 mx.example.test "), greeting
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def listening_port(process: subprocess.Popen[str]) -> int:
    """The port of the `listening` log line (JSON on stderr)."""
    assert process.stderr is not None
    for line in process.stderr:
        event = json.loads(line)
        if event.get("event") == "listening":
            return int(event["address"][0].rpartition(":")[2])
    msg = "filterd serve stopped before listening"
    raise AssertionError(msg)


# ([headers] hostname, X-Virus-Scanned it gives when Postfix's myhostname is mx.example.test)
SCANNED_BY = [
    ("", f"filterd {__version__} at mx.example.test"),
    ("filter.example.test", f"filterd {__version__} at filter.example.test"),
    ("-", f"filterd {__version__}"),
]


@pytest.mark.parametrize(("setting", "want"), SCANNED_BY, ids=["default", "configured", "none"])
def test_x_virus_scanned(monkeypatch: pytest.MonkeyPatch, setting: str, want: str) -> None:
    monkeypatch.setattr(pipeline, "default_hostname", lambda: "mx.example.test")
    got = pipeline.Pipeline(Policy(), FakeScanner(), hostname=setting).scanned_by
    assert got == want
