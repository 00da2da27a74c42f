"""Fixtures for the scanner tests: fake clamd servers that are always shut down."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from filterd.scan import ClamdScanner

from .fake_clamd import FakeClamd, Mode

QUICK = 0.3  # seconds: every timeout of quick_pool's scanners


def quick_pool(*addresses: str, **settings: float) -> ClamdScanner:
    """A scanner on `addresses` whose every wait is QUICK, health checks every 0.05 s."""
    values: dict[str, float] = {
        "connect_timeout": QUICK,
        "io_timeout": QUICK,
        "reply_timeout": QUICK,
        "queue_timeout": QUICK,
        "health_interval": 0.05,
        "health_backoff_max": 0.1,
    }
    values.update(settings)
    return ClamdScanner(list(addresses), **values)  # type: ignore[arg-type]


class StartFake(Protocol):
    async def __call__(
        self,
        mode: Mode = Mode.REPLY,
        *,
        reply: bytes = b"stream: OK\0",
        delay: float = 0.0,
        limit: int = 0,
        unix: bool = False,
    ) -> FakeClamd: ...


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a UNIX socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fd-scan-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start_fake(short_dir: Path) -> AsyncIterator[StartFake]:
    started: list[FakeClamd] = []

    async def start(
        mode: Mode = Mode.REPLY,
        *,
        reply: bytes = b"stream: OK\0",
        delay: float = 0.0,
        limit: int = 0,
        unix: bool = False,
    ) -> FakeClamd:
        fake = FakeClamd(mode, reply=reply, delay=delay, limit=limit)
        if unix:
            await fake.start_unix(str(short_dir / f"clamd{len(started)}.sock"))
        else:
            await fake.start_tcp()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()
