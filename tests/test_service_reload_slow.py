"""A reload reads the configuration off the event loop: a slow postconf does not hold the
sessions in progress.

SIGHUP makes `filterd serve` run serve_cli.settings() again, and with it `postconf` (check_cli:
smtpd_proxy_timeout). Here a postconf first on PATH sleeps SLOW seconds once a marker file
exists, then runs the real one; a session opened before the SIGHUP sends a whole message
while that postconf sleeps, and its replies must come well before the sleep is over."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.test_app_process import serving
from tests.test_service_reload import opened, send, settings
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port

SLOW = 4.0  # seconds the fake postconf sleeps during the reload


def fake_postconf(directory: Path, real: str) -> tuple[Path, Path]:
    """A postconf that sleeps while `marker` exists, touching `asleep` first."""
    marker, asleep = directory / "slow", directory / "asleep"
    script = directory / "postconf"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ]; then touch "{asleep}"; sleep {SLOW:g}; fi\n'
        f'exec "{real}" "$@"\n'
    )
    script.chmod(0o755)
    return marker, asleep


def slow_postconf_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The fake postconf first on PATH; (the file that makes it slow, the one it writes asleep)."""
    real = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin")
    if real is None:
        pytest.skip("postconf is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return fake_postconf(bin_dir, real)


def wait_for_file(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


async def test_a_slow_reload_does_not_hold_a_session(
    tmp_path: Path, clamd: Clamd, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker, asleep = slow_postconf_on_path(tmp_path, monkeypatch)
    port = free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(settings(clamd, port, 100_000))
    with serving(tmp_path, "--config", str(cfg)) as served:
        served.wait_for("started")
        session = await opened(port)
        marker.touch()
        hup = time.monotonic()
        served.process.send_signal(signal.SIGHUP)
        wait_for_file(asleep)  # the reload is in postconf now
        started = time.monotonic()
        answer = await send(session)
        replied = time.monotonic() - started
        served.wait_for("reloaded")
        reload_took = time.monotonic() - hup
        await session.close()
        assert served.stop() == 0
    assert answer in {"a", "c"}, answer
    assert reload_took >= SLOW * 0.9, "the reload went through the slow postconf"
    assert replied < SLOW / 2, f"the session waited {replied:.1f}s for the reload"


def test_sigterm_during_a_slow_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload still in postconf is dropped: `stopping`, `stopped`, exit 0, no `reloaded`."""
    marker, asleep = slow_postconf_on_path(tmp_path, monkeypatch)
    cfg = tmp_path / "filterd.toml"
    cfg.write_text('[log]\nformat = "json"\n[clamd]\naddress = "tcp:127.0.0.1:1"\n')
    with serving(tmp_path, "--config", str(cfg), "--proxy", "127.0.0.1:0") as served:
        served.wait_for("started")
        marker.touch()
        served.process.send_signal(signal.SIGHUP)
        wait_for_file(asleep)
        assert served.stop() == 0
    events = [e["event"] for e in served.events()]
    assert events[-2:] == ["stopping", "stopped"], events
    assert "reloaded" not in events
