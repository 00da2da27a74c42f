"""The systemd units in systemd/ and the protocols filterd speaks with systemd.

- `systemd-analyze verify` finds nothing to say about the units (it warns, and still exits 0,
  on an unknown key: the test requires silence), in a root directory of their own where
  ExecStart's path exists;
- socket activation with `systemd-socket-activate` (Debian's systemd package): the proxy on
  TCP and the milter on a UNIX socket, passed by name; a connection made before filterd ran
  waits in the passed socket's queue and is served;
- readiness: a private NOTIFY_SOCKET receives READY=1, RELOADING=1 and READY=1 around a
  SIGHUP, then STOPPING=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from filterd.endpoints.activation import NAMES
from filterd.testing import RawSmtpClient
from tests.endpoints.milter_client import MilterClient
from tests.test_app_process import serving
from tests.testbed.common import free_port

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
UNIT_FILES = ["filterd.service", "filterd-proxy.socket", "filterd-milter.socket"]
ANALYZE = shutil.which("systemd-analyze")
ACTIVATE = shutil.which("systemd-socket-activate")


def unit_root(tmp_path: Path) -> Path:
    """A root directory for `systemd-analyze --root`: the units, the system's own units
    (sysinit.target...), the ExecStart= program and /bin/kill of ExecReload=."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in UNIT_FILES:
        shutil.copy(UNITS / name, root / "etc/systemd/system" / name)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for line in (UNITS / "filterd.service").read_text().splitlines():
        if line.startswith("ExecStart="):
            program = root / line.removeprefix("ExecStart=").split()[0].lstrip("/")
            program.parent.mkdir(parents=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy("/bin/kill", root / "bin/kill")
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    units = [f"etc/systemd/system/{name}" for name in UNIT_FILES]
    return subprocess.run(
        [ANALYZE, "verify", "--man=no", f"--root={root}", *units],
        capture_output=True, text=True, timeout=60, check=False, cwd=root,
    )  # fmt: skip


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_units_verify_clean(tmp_path: Path) -> None:
    got = verify(unit_root(tmp_path))
    assert (got.returncode, got.stdout + got.stderr) == (0, "")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    root = unit_root(tmp_path)
    service = root / "etc/systemd/system/filterd.service"
    service.write_text(service.read_text().replace("PrivateTmp=", "PrivateTmpp="))
    assert "Unknown key 'PrivateTmpp'" in verify(root).stderr


def settings(text: str) -> dict[str, list[str]]:
    """KEY -> values, in order, of a unit file (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)=(.*)", line)
        if match:
            found.setdefault(match[1], []).append(match[2])
    return found


def test_the_socket_units_name_their_endpoints() -> None:
    for name in NAMES:
        unit = settings((UNITS / f"filterd-{name}.socket").read_text())
        assert unit["FileDescriptorName"] == [name]
        assert unit["Service"] == ["filterd.service"]


SERVICE_WANTS = {
    "Type": "notify",
    "NotifyAccess": "main",  # the workers' supervisor alone (filterd.workers.supervisor)
    "KillMode": "mixed",  # SIGTERM to the supervisor, which drains its workers
    "User": "filterd",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "RuntimeDirectory": "filterd",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
}


def test_the_service_is_notify_and_sandboxed() -> None:
    unit = settings((UNITS / "filterd.service").read_text())
    assert {key: unit.get(key, [None])[-1] for key in SERVICE_WANTS} == SERVICE_WANTS


class Activated:
    """`systemd-socket-activate ... filterd serve ...`; its stderr mixes the activator's text
    lines with filterd's JSON lines."""

    def __init__(self, tmp_path: Path, listen: list[str], names: str, *args: str) -> None:
        assert ACTIVATE is not None
        self.log = tmp_path / "activated.log"
        command = [ACTIVATE, *(f"--listen={a}" for a in listen), f"--fdname={names}",
                   sys.executable, "-m", "filterd.cli", "serve", *args]  # fmt: skip
        with self.log.open("w") as err:
            self.process = subprocess.Popen(command, cwd=ROOT, stderr=err)
        self.until(lambda text: text.count("Listening on") == len(listen))

    def text(self) -> str:
        return self.log.read_text()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]

    def until(self, done: Callable[[str], bool]) -> None:
        deadline = time.monotonic() + 15
        while not done(self.text()):
            assert self.process.poll() is None or done(self.text()), self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.02)

    def close(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_socket_activation_serves_both_endpoints(tmp_path: Path) -> None:
    port, milter = free_port(), tmp_path / "milter.sock"
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(
        '[log]\nformat = "json"\n[clamd]\naddress = "tcp:127.0.0.1:1"\n'
        f'[proxy]\nlisten = "127.0.0.1:{port}"\ndownstream = "127.0.0.1:1"\n'
        f'hostname = "activated.example"\n[milter]\nlisten = "unix:{milter}"\n'
    )
    served = Activated(tmp_path, [f"127.0.0.1:{port}", str(milter)], "proxy:milter",
                       "--config", str(cfg))  # fmt: skip
    try:
        # systemd-socket-activate starts filterd on this first connection, which waits in
        # the passed socket's queue meanwhile: filterd must serve that socket, not its own.
        with RawSmtpClient(port, timeout=15) as client:
            assert client.reply().startswith("220 activated.example ")
        served.until(lambda text: '"event": "started"' in text)
        assert asyncio.run(milter_version(milter)) == 6
    finally:
        assert served.close() == 0, served.text()
    listening = {e["endpoint"]: e for e in served.events() if e["event"] == "listening"}
    assert listening["proxy"]["address"] == [f"127.0.0.1:{port}"]
    assert listening["proxy"]["activated"] is True
    assert listening[f"milter unix:{milter}"]["activated"] is True
    assert milter.exists(), "the passed socket is systemd's: filterd leaves it in place"


async def milter_version(path: Path) -> int:
    client = await MilterClient.open_unix(str(path))
    try:
        return (await client.negotiate()).version
    finally:
        await client.close()


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_a_passed_socket_without_its_endpoint_is_one_line(tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    served = Activated(tmp_path, [f"127.0.0.1:{port}"], "milter", "--clamd", "tcp:127.0.0.1:1",
                       "--proxy", f"127.0.0.1:{other}")  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=5):  # filterd starts
        code = served.process.wait(30)
    assert code == 2, served.text()
    assert "Traceback" not in served.text()
    lines = [line for line in served.text().splitlines() if line.startswith("filterd serve:")]
    assert lines == [
        (
            "filterd serve: socket activation: a 'milter' socket was passed but milter.listen "
            "is not set; set it (to the .socket unit's address) or remove filterd-milter.socket"
        )
    ]


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_a_passed_socket_beyond_loopback_is_refused(tmp_path: Path) -> None:
    """The socket unit decides the address: the loopback rule applies to it, not to listen."""
    port = free_port()
    served = Activated(tmp_path, [f"0.0.0.0:{port}"], "proxy", "--clamd", "tcp:127.0.0.1:1",
                       "--proxy", f"127.0.0.1:{port}")  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=5):  # filterd starts
        code = served.process.wait(30)
    assert code == 2, served.text()
    lines = [line for line in served.text().splitlines() if line.startswith("filterd serve:")]
    assert lines == [
        (
            f"filterd serve: socket activation: the proxy socket listens on 0.0.0.0:{port}, "
            "not loopback; filterd listens on loopback only unless [server] "
            "allow_non_loopback = true"
        )
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_readiness_reload_and_stop_are_notified(tmp_path: Path, workers: int) -> None:
    """With 2 workers the parent alone notifies (NotifyAccess=main), READY=1 once both are."""
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"filterd-test-notify-{os.getpid()}"
    manager.bind("\0" + name)
    manager.settimeout(15)
    cfg = tmp_path / "filterd.toml"
    cfg.write_text('[log]\nformat = "json"\n')
    env = {**os.environ, "NOTIFY_SOCKET": "@" + name}
    wrapper = ["env", f"NOTIFY_SOCKET={env['NOTIFY_SOCKET']}", sys.executable, "-m",
               "filterd.cli", "serve"]  # fmt: skip
    with manager, serving(tmp_path, "--config", str(cfg), "--proxy", "127.0.0.1:0",
                          "--downstream", "127.0.0.1:1", "--clamd", "tcp:127.0.0.1:1",
                          wrapper=wrapper, workers=workers) as served:  # fmt: skip
        ready = manager.recv(4096).decode().splitlines()
        assert served.events()[-1]["event"] == "started", "READY=1 only once listening"
        ready_workers = [e for e in served.events() if e["event"] == "worker ready"]
        assert len(ready_workers) == (workers if workers > 1 else 0)
        served.process.send_signal(signal.SIGHUP)
        reloading = manager.recv(4096).decode().splitlines()
        ready_again = manager.recv(4096).decode().splitlines()
        reloaded = [e for e in served.events() if e["event"] == "reloaded"]
        assert len(reloaded) == workers, "READY=1 again once every worker has reloaded"
        served.process.send_signal(signal.SIGTERM)
        stopping = manager.recv(4096).decode().splitlines()
        assert served.process.wait(30) == 0
    assert ready[0] == "READY=1"
    more = "; 2 workers" if workers == 2 else ""
    assert re.fullmatch(rf"STATUS=serving proxy on 127\.0\.0\.1:\d+{more}", ready[1]), ready
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert ready_again[0] == "READY=1"
    assert stopping[0] == "STOPPING=1"
