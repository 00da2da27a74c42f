"""Small helpers for the servers the tests and benches start as child processes."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from pathlib import Path
from typing import Protocol

from tests.testbed.common import Stoppable, remove_dir, unregister


class ChildServer(Stoppable, Protocol):
    """A registered child process with a private directory of its own."""

    directory: Path

    def stop(self) -> None: ...


def accepts(host: str, port: int, timeout: float) -> bool:
    """Something listens on host:port: a TCP connection opens within `timeout` seconds."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def terminate(process: subprocess.Popen[bytes] | None, timeout: float, kill_wait: float) -> None:
    """SIGTERM, then SIGKILL if `process` has not ended within `timeout` seconds; a process
    that is missing or already ended is left alone."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(kill_wait)


def close_server(server: ChildServer) -> None:
    """Stop `server`, then, even if that failed, unregister it and remove its directory."""
    try:
        server.stop()
    finally:
        unregister(server)
        remove_dir(server.directory)
