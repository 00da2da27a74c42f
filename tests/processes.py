"""Small helpers for the servers the tests and benches start as child processes."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from tests.testbed.common import (
    StartupError,
    Stoppable,
    private_dir,
    read_log,
    register,
    remove_dir,
    unregister,
)

ROOT = Path(__file__).resolve().parents[1]


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


class FilterdProcess:
    """`filterd serve ARGS` as a child process, registered with the test bed, started once
    `listen` (`inet:HOST:PORT` or `unix:PATH`) takes connections. With `settings`, the
    process gets `--config` with them after `[log] format = "json"`."""

    def __init__(self, args: list[str], listen: str, settings: str | None = None) -> None:
        self.listen = listen
        self.directory = private_dir("filterd-serve-")
        self.log_path = self.directory / "filterd.log"
        self.command = [sys.executable, "-m", "filterd.cli", "serve", *args]
        if settings is not None:
            config = self.directory / "filterd.toml"
            config.write_text(f'[log]\nformat = "json"\n{settings}')
            self.command += ["--config", str(config)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"filterd serve on {self.listen}"

    def start(self, timeout: float = 15.0) -> None:
        register(self)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StartupError(f"{self.name} did not start:\n{self.log_text()}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        family, _, rest = self.listen.partition(":")
        if family == "unix":
            return Path(rest).exists()
        host, _, port = rest.rpartition(":")
        return accepts(host, int(port), 0.2)

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout, kill_wait=timeout)

    def close(self) -> None:
        close_server(self)

    def log_text(self) -> str:
        return read_log(self.log_path)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()
