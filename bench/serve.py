"""`filterd serve --proxy ... --milter ...` as a process for the hostile-load and soak benches:
start it with a chosen descriptor limit, watch its memory, tell dead from wedged, restart it.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from tests.processes import accepts, close_server, terminate
from tests.testbed.common import StartupError, private_dir, register

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def soft_nofile(limit: int | None) -> Iterator[None]:
    """Our own RLIMIT_NOFILE soft limit set to `limit` (None: unchanged) for the block, so
    that a child started inside it inherits that limit; the hard limit is left alone, so
    the child may still raise its soft limit itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit is None:
        yield
        return
    wanted = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def raise_own_nofile() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit (for the client side of a flood)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Ports(NamedTuple):
    proxy: int  # filterd's proxy listener
    milter: int  # filterd's milter listener
    downstream: int  # where the proxy relays accepted mail


class Child:
    """A program the benches start as a child process, with its own private directory."""

    label = "child"
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{self.label} [{self.directory}]"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.label} is not started")
        return self.process.pid


class FilterdServe(Child):
    """One filterd process serving the proxy and the milter endpoint on loopback."""

    label = "filterd serve"

    def __init__(
        self,
        ports: Ports,
        clamd: str,
        *,
        settings: str = "",
        nofile: int | None = None,
        workers: int = 1,
    ) -> None:
        """`workers = 1` by default: the benches read one process's /proc figures (CPU, RSS);
        0 is filterd's own default, one per core (bench.peers sums the process tree)."""
        self.proxy_port = ports.proxy
        self.milter_port = ports.milter
        self.nofile = nofile
        self.directory = private_dir("filterd-bench-serve-")
        self.log_path = self.directory / "filterd.log"
        config = self.directory / "filterd.toml"
        config.write_text(f'[log]\nformat = "json"\n{settings}')
        self.command = [
            sys.executable, "-m", "filterd.cli", "serve", "--config", str(config),
            "--proxy", f"127.0.0.1:{ports.proxy}",
            "--downstream", f"127.0.0.1:{ports.downstream}",
            "--milter", f"inet:127.0.0.1:{ports.milter}",
            "--clamd", clamd, "--workers", str(workers),
        ]  # fmt: skip
        self.starts = 0

    def start(self, timeout: float = 15.0) -> None:
        register(self)
        with self.log_path.open("ab") as log, soft_nofile(self.nofile):
            self.process = subprocess.Popen(  # noqa: S603 (fixed argument list)
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not (self.greets() and self._milter_listens()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                msg = f"filterd did not start:\n{self.log_tail()}"
                raise StartupError(msg)
            time.sleep(0.05)

    def greets(self, timeout: float = 1.0) -> bool:
        """The proxy answers a connection with a 220 greeting within `timeout`."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.proxy_port), timeout=timeout) as conn,
        ):
            conn.settimeout(timeout)
            greeting = conn.recv(512).startswith(b"220")
            conn.sendall(b"QUIT\r\n")
            return greeting
        return False

    def _milter_listens(self) -> bool:
        return accepts("127.0.0.1", self.milter_port, 0.5)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, timeout: float = 15.0) -> None:
        terminate(self.process, timeout, kill_wait=5)

    def close(self) -> None:
        close_server(self)

    # --- what it costs ---------------------------------------------------------------------

    def status_kib(self, field: str) -> int:
        """A `kB` field of /proc/PID/status (proc(5)), e.g. VmRSS or VmHWM; 0 when gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except (OSError, RuntimeError):
            return 0
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (proc(5): writing 5 to clear_refs, Linux >= 4.0)."""
        with contextlib.suppress(OSError, RuntimeError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def open_files(self) -> int:
        try:
            return sum(1 for _ in Path(f"/proc/{self.pid}/fd").iterdir())
        except (OSError, RuntimeError):
            return 0

    def nofile_limit(self) -> str:
        """The process's `Max open files` soft/hard limits, as /proc/PID/limits shows them."""
        with contextlib.suppress(OSError, RuntimeError):
            for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return f"{soft}/{hard}"
        return "?"

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, size: int = 2000) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, self.log_size() - size))
                return log.read().decode(errors="replace")
        except OSError:
            return ""
