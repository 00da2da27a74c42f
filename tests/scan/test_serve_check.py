"""app.serve checks each clamd before the endpoints start: one log line per address."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import structlog

from filterd import app
from filterd.config import ClamdSettings, Config
from tests.testbed.clamd import Clamd


class Endpoint:
    """Stands in for the proxy: records when it starts."""

    name = "proxy"

    def __init__(self, started: asyncio.Event) -> None:
        self.started = started

    async def start(self) -> None:
        self.started.set()

    async def close(self) -> None:
        return None


async def test_serve_logs_each_clamd_before_listening(
    clamd: Clamd, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"unix:{short_dir / 'none.sock'}"
    config = Config(clamd=ClamdSettings(address=(clamd.address, clamd.tcp_address, missing)))
    started = asyncio.Event()
    monkeypatch.setattr(app, "configure", lambda *args, **kwargs: None)
    monkeypatch.setattr(app, "build_endpoints", lambda config, pipeline: [Endpoint(started)])
    with structlog.testing.capture_logs() as logs:
        serving = asyncio.create_task(app.serve(config))
        async with asyncio.timeout(10):
            await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 10)
    checks = [e for e in logs if e["event"] in ("clamd", "clamd unreachable")]
    assert [(e["log_level"], e["address"]) for e in checks] == [
        ("info", clamd.address),
        ("info", clamd.tcp_address),
        ("warning", missing),
    ]
    assert checks[0]["version"].startswith("ClamAV 1.4.")
    assert checks[2]["error"] == "connect failed (FileNotFoundError)"
    assert logs.index(checks[-1]) < next(i for i, e in enumerate(logs) if e["event"] == "listening")
