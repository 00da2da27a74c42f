"""Root fixtures: the real test bed (private clamd, private Postfix, SMTP sink).

Fixtures that start real programs skip when the programs are missing, except under CI (env CI
set), where they fail. Tests that use them get the `integration` marker automatically.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.testbed.clamd import Clamd
from tests.testbed.common import stop_all
from tests.testbed.postfix import PostfixFactory
from tests.testbed.sink import Sink

# Fixtures that start real programs; a test using any of them is an integration test.
# (`sink` alone is pure Python and runs anywhere.)
ServerT = TypeVar("ServerT", Clamd, Sink)

_INTEGRATION_FIXTURES = frozenset({"clamd", "clamd_stopped", "postfix_factory", "make_postfix"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net: nothing the test bed started may outlive the session."""
    leftovers = stop_all()
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("test bed: stopped leftovers: " + ", ".join(leftovers))


def started(server: ServerT) -> Iterator[ServerT]:
    """Start `server` for a fixture and close it afterwards, even when starting fails."""
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def clamd() -> Iterator[Clamd]:
    """A private clamd for the whole session (see tests/testbed/clamd.py)."""
    yield from started(Clamd())


@pytest.fixture
def clamd_stopped(clamd: Clamd) -> Iterator[Clamd]:
    """The session clamd, stopped for this test and restarted afterwards even on failure."""
    with clamd.paused():
        yield clamd


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A fresh SMTP sink on a free loopback port (tests/testbed/sink.py)."""
    yield from started(Sink())


@pytest.fixture(scope="session")
def postfix_factory() -> Iterator[PostfixFactory]:
    """Start private Postfix instances: `postfix_factory(mode="plain", main_cf={...}, ...)`.

    Instances live until the end of the session unless the test calls `.close()`.
    """
    yield from closing_factory()


@pytest.fixture
def make_postfix() -> Iterator[PostfixFactory]:
    """Like `postfix_factory`, but the instances are closed when the test ends."""
    yield from closing_factory()


def closing_factory() -> Iterator[PostfixFactory]:
    factory = PostfixFactory()
    try:
        yield factory
    finally:
        factory.close_all()


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A private UNIX datagram socket standing in for /dev/log (its path: `tmp_path/log`)."""
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, path
    sock.close()
