"""The default name: Postfix's myhostname (main.cf, else its default), else the FQDN, never
localhost (then the bare host name)."""

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


def test_without_main_cf_postfix_default(tmp_path: Path) -> None:
    """A Postfix installed with "No configuration" has no main.cf: `postconf -h` fails, but
    `postconf -d -h myhostname` gives the name this Postfix would use."""
    require_postconf()
    want = postconf.run(["-d", "-h", "myhostname"], str(tmp_path)).strip()
    assert hostname.postfix_myhostname(str(tmp_path)) is None
    got = hostname.default_hostname(str(tmp_path))
    assert got == want
    assert got not in hostname.NOT_A_NAME


# (id, postconf -h, postconf -d -h, getfqdn(), gethostname(), the name chosen); None: fails
CHOICES = [
    ("main-cf", "mx.example.test", "vm.localdomain", "localhost", "vm", "mx.example.test"),
    ("no-main-cf", None, "vm.localdomain", "localhost", "vm", "vm.localdomain"),
    ("no-postconf", None, None, "vm.example.test", "vm", "vm.example.test"),
    ("fqdn-localhost", None, None, "localhost", "vm", "vm"),
    ("fqdn-localhost-localdomain", None, None, "localhost.localdomain", "vm", "vm"),
    ("postfix-says-localhost", "localhost", "localhost", "vm.example.test", "vm",
     "vm.example.test"),
    ("only-localhost", None, None, "localhost", "localhost", "localhost"),
]  # fmt: skip


@pytest.mark.parametrize("case", CHOICES, ids=[c[0] for c in CHOICES])
def test_the_name_chosen(monkeypatch: pytest.MonkeyPatch, case: tuple[str | None, ...]) -> None:
    _, main_cf, default, fqdn, bare, want = case

    def postconf_run(args: list[str], config_dir: str | None) -> str:
        answer = default if "-d" in args else main_cf
        if answer is None:
            raise postconf.PostconfError("postconf: fatal: open /etc/postfix/main.cf")
        return answer + "\n"

    monkeypatch.setattr(hostname, "run", postconf_run)
    monkeypatch.setattr(socket, "getfqdn", lambda: fqdn)
    monkeypatch.setattr(socket, "gethostname", lambda: bare)
    got = hostname.default_hostname.__wrapped__()
    assert got == want, f"got {got!r}, want {want!r}"


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
