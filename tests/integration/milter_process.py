"""`filterd serve --milter ...` as a separate process, the way Postfix meets it in production.

Registered with the test bed (tests/testbed/common.py), so a crashed test cannot leave it
running; `close()` sends SIGTERM, then SIGKILL if it does not stop.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.processes import accepts, close_server, terminate
from tests.testbed.common import StartupError, private_dir, register

_FILTERD = [sys.executable, "-m", "filterd.cli"]


class FilterdMilter:
    def __init__(self, listen: str, clamd: str, settings: str = "") -> None:
        self.listen = listen
        self.clamd = clamd
        self.directory = private_dir("filterd-milter-")
        self.config = self.directory / "filterd.toml"
        self.config.write_text(f'[log]\nformat = "json"\n{settings}')
        self.log_path = self.directory / "filterd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"filterd milter {self.listen}"

    def start(self, timeout: float = 10.0) -> None:
        register(self)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*_FILTERD, "serve", "--milter", self.listen, "--clamd", self.clamd,
                 "--config", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=Path(__file__).resolve().parents[2],
            )  # fmt: skip
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
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()
