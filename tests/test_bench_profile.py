"""bench.profile charges each py-spy sample to the right code and area; bench.logline runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.profile import area, owner
from tests.tables import cases

LOOP = ["_run_once (asyncio/base_events.py:1922)", "_run (asyncio/events.py:80)"]
WRITE = "write (asyncio/selector_events.py:1)"


def stack(*frames: str) -> str:
    """A py-spy raw stack: outermost frame first, below the event loop."""
    return ";".join([*LOOP, *frames])


CLIENT = stack("Connection.send (filterd/endpoints/proxy/connection.py:160)", WRITE)
DOWNSTREAM = stack("Downstream._write (filterd/endpoints/proxy/downstream.py:230)", WRITE)
LOG = stack("Pipeline.log (filterd/pipeline.py:150)", "meth (structlog/_native.py:171)")
MILTER = stack(
    "MilterSession.handle (filterd/endpoints/milter/session.py:144)",
    "__init__ (<attrs generated methods purepythonmilter.protocol.commands.Header>)",
)
CONNECT = stack("_sock_connect (asyncio/selector_events.py:640)")
IDLE = "run_forever (asyncio/base_events.py:1);select (selectors.py:468)"

CASES = [
    ("client-reply", CLIENT, "replies to the client / answers to the MTA"),
    ("downstream-write", DOWNSTREAM, "writes to the reinjection smtpd"),
    ("log-line", LOG, "logging (structlog, the stdlib logging path)"),
    ("milter-command", MILTER, "purepythonmilter (command objects, its loggers)"),
    ("connect", CONNECT, "connects (clamd, the reinjection smtpd)"),
    ("idle", IDLE, "(idle: waiting for I/O)"),
]


@pytest.mark.parametrize(("sample", "want"), cases(CASES))
def test_area(sample: str, want: str) -> None:
    assert area(sample) == want


def test_owner_is_the_innermost_own_frame() -> None:
    assert owner(LOG) == "structlog._native.meth"
    assert owner(CLIENT) == "filterd.endpoints.proxy.connection.Connection.send"
    assert owner(CONNECT) == "(event loop and standard library)"
    assert owner(IDLE) == "(idle: waiting for I/O)"


def test_logline_prints_the_three_figures() -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "bench.logline", "--lines", "50", "--repeat", "1"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = [line.split(":")[0].strip() for line in done.stdout.splitlines()]
    assert names == ["canonical line (info)", "filtered debug call", "bare json.dumps + write"]
