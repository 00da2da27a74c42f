"""`filterd serve` as a process: descriptor limits, accept errors, start errors, start/stop lines.

Each test starts filterd in a subprocess; a small wrapper lowers RLIMIT_NOFILE first, the way
`ulimit -n` or systemd's LimitNOFILE= would.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import filterd
from filterd.testing import RawSmtpClient
from tests.tables import cases
from tests.testbed.common import free_port

ROOT = Path(__file__).resolve().parents[1]
CLAMD = "tcp:127.0.0.1:1"  # never contacted: no message is scanned here

# Lower the limits, then run `filterd` with the remaining arguments.
LIMITED = """
import resource, sys
from filterd.cli import main
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
sys.exit(main(sys.argv[3:]))
"""

# `filterd serve` in-process; SIGUSR1 uses up every free descriptor (the soft limit drops to
# the highest open one, the holes below are filled), SIGUSR2 gives them back.
EXHAUSTIBLE = """
import asyncio, os, resource, signal, sys
from filterd import app, config

held = []

def exhaust():
    loop.get_exception_handler().interval = 1.0  # the limiter: a short interval for the test
    top = max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (top, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            break
    print("exhausted", flush=True)

def restore():
    while held:
        os.close(held.pop())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print("restored", flush=True)

async def main():
    global loop
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, exhaust)
    loop.add_signal_handler(signal.SIGUSR2, restore)
    await app.serve(config.load(config.Path(sys.argv[1])))

asyncio.run(main())
"""


def run_limited(soft: int, hard: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", LIMITED, str(soft), str(hard), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False, cwd=ROOT
    )


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not JSON log lines."""
    found = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            found.append(line)
    return found


# (id, soft and hard limit, serve arguments, text the refusal must contain)
ONE = ["--workers", "1"]
TOO_FEW = [
    ("proxy", 64, [*ONE, "--proxy", "127.0.0.1:0"], "need 274 file descriptors"),
    ("milter", 64, [*ONE, "--milter", "inet:127.0.0.1:0"], "milter max_connections 200 = 200"),
    ("both", 300, [*ONE, "--proxy", "127.0.0.1:0", "--milter", "inet:127.0.0.1:0"],
     ("proxy 2 x max_connections 100 = 200 + milter max_connections 200 = 200 + "
      "clamd max_concurrent 10 = 10 + margin 64), but RLIMIT_NOFILE allows 300")),
    # The limit is per process: each of 2 workers is checked with its share, which for the
    # connections is the whole max_connections (counted over all workers, one may hold all).
    ("2 workers", 64, ["--workers", "2", "--proxy", "127.0.0.1:0"],
     ("need 269 file descriptors (proxy 2 x max_connections 100 = 200 + "
      "clamd max_concurrent 5 = 5 + margin 64)")),
]  # fmt: skip


@pytest.mark.parametrize(("limit", "args", "want"), cases(TOO_FEW))
def test_refuses_to_start_when_the_limits_cannot_fit(
    limit: int, args: list[str], want: str
) -> None:
    got = run_limited(limit, limit, "serve", "--clamd", CLAMD, *args)
    assert got.returncode == 2, got.stderr
    assert error_lines(got.stderr) == [error_lines(got.stderr)[0]], got.stderr  # one line
    line = error_lines(got.stderr)[0]
    assert line.startswith("filterd serve: the connection limits need"), line
    assert want in line, line
    assert "Traceback" not in got.stderr


class Served:
    """A filterd process whose stderr goes to a file, read as JSON lines."""

    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def wait_for(self, event: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len([e for e in self.events() if e["event"] == event]) < count:
            assert self.process.poll() is None, f"filterd ended: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"no {event!r}: {self.log.read_text()}"
            time.sleep(0.05)
        return self.events()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@contextmanager
def serving(
    tmp_path: Path, *args: str, wrapper: list[str] | None = None, workers: int | None = 1
) -> Iterator[Served]:
    """`filterd serve ARGS`; `workers` is given as --workers (None: not given). These tests
    are about one process; tests/test_workers_serve.py runs several."""
    given = ["--workers", str(workers)] if workers is not None else []
    command = [*(wrapper or [sys.executable, "-m", "filterd.cli", "serve"]), *args, *given]
    log = tmp_path / "filterd.log"
    with log.open("w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        yield Served(process, log)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_the_soft_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    cfg = tmp_path / "filterd.toml"
    cfg.write_text('[log]\nformat = "json"\n')
    wrapper = [sys.executable, "-c", LIMITED, "64", "4096", "serve"]
    with serving(tmp_path, "--config", str(cfg), "--proxy", "127.0.0.1:0", "--clamd", CLAMD,
                 wrapper=wrapper) as served:  # fmt: skip
        events = served.wait_for("listening")
        limits = Path(f"/proc/{served.process.pid}/limits").read_text()
        assert served.stop() == 0
    (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"], line
    (fds,) = [e for e in events if e["event"] == "file descriptors"]
    assert (fds["limit"], fds["needed"]) == (4096, 274)


def milter_negotiates(port: int) -> bool:
    """Sendmail milter protocol: SMFIC_OPTNEG answered by SMFIC_OPTNEG."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = struct.pack("!III", 6, 0x1FF, 0x1FFFFF)
        sock.sendall(struct.pack("!I", 1 + len(data)) + b"O" + data)
        header = sock.recv(5, socket.MSG_WAITALL)
        return header[4:5] == b"O"


def test_accept_errors_are_logged_once_per_interval_and_serving_resumes(tmp_path: Path) -> None:
    """Real EMFILE on accept(): asyncio calls the loop's exception handler for every attempt
    (up to the backlog, 1024, per loop step); the log must stay a few lines, and both
    endpoints must serve again once descriptors are free."""
    proxy_port, milter_port = free_port(), free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(
        f'[log]\nformat = "json"\n[clamd]\naddress = "{CLAMD}"\n'
        f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\ndownstream = "127.0.0.1:1"\n'
        f'[milter]\nlisten = "inet:127.0.0.1:{milter_port}"\n'
    )
    wrapper = [sys.executable, "-c", EXHAUSTIBLE]
    with serving(tmp_path, str(cfg), wrapper=wrapper, workers=None) as served:
        stdout = served.process.stdout
        assert stdout is not None
        served.wait_for("listening", count=2)
        before = served.log.stat().st_size
        served.process.send_signal(signal.SIGUSR1)
        assert stdout.readline().strip() == "exhausted"
        waiting = [RawSmtpClient(proxy_port, timeout=10) for _ in range(20)]
        time.sleep(2.5)  # two of asyncio's 1 s accept retries, and two limiter intervals
        during = served.log.read_text()[before:]
        served.process.send_signal(signal.SIGUSR2)
        assert stdout.readline().strip() == "restored"
        greetings = [client.reply() for client in waiting]
        assert milter_negotiates(milter_port)
        for client in waiting:
            client.close()
        assert served.stop() == 0
    events = [json.loads(line) for line in during.splitlines()]
    assert len(during) < 4000, during
    first = [e for e in events if e["event"].startswith("accept failed")]
    repeated = [e for e in events if e["event"] == "accept still failing"]
    assert len(first) == 1, events
    assert first[0]["error"] == "EMFILE"
    assert 1 <= len(repeated) <= 3, events
    assert sum(e["failures"] for e in repeated) > 0
    assert all(line.startswith("220 ") for line in greetings), greetings


@pytest.mark.parametrize("endpoint", ["proxy", "milter"])
def test_address_in_use_is_one_line_and_exit_2(endpoint: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flag = {"proxy": ["--proxy", f"127.0.0.1:{port}"],
                "milter": ["--milter", f"inet:127.0.0.1:{port}"]}[endpoint]  # fmt: skip
        got = subprocess.run(
            [sys.executable, "-m", "filterd.cli", "serve", "--clamd", CLAMD, *flag],
            capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
        )  # fmt: skip
    assert got.returncode == 2, got.stderr
    assert "Traceback" not in got.stderr
    (line,) = error_lines(got.stderr)
    assert line.startswith(f"filterd serve: {endpoint}.listen: cannot listen on "), line
    assert line.endswith(": Address already in use"), line


def test_second_endpoint_in_use_closes_the_first() -> None:
    """The proxy starts, the milter cannot bind: one line, exit 2, nothing left listening."""
    proxy_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        milter = f"inet:127.0.0.1:{taken.getsockname()[1]}"
        got = subprocess.run(
            [sys.executable, "-m", "filterd.cli", "serve", "--clamd", CLAMD,
             "--proxy", f"127.0.0.1:{proxy_port}", "--milter", milter],
            capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
        )  # fmt: skip
    assert got.returncode == 2, got.stderr
    assert "Traceback" not in got.stderr
    (line,) = error_lines(got.stderr)
    assert line.startswith("filterd serve: milter.listen: "), line
    assert line.endswith(": Address already in use"), line


def test_non_loopback_on_the_command_line_is_refused() -> None:
    got = subprocess.run(
        [sys.executable, "-m", "filterd.cli", "serve",
         "--clamd", CLAMD, "--proxy", "0.0.0.0:10024"],
        capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
    )  # fmt: skip
    assert got.returncode == 2
    (line,) = error_lines(got.stderr)
    assert "proxy.listen: '0.0.0.0:10024' is not a loopback address" in line


def test_start_and_stop_lines(tmp_path: Path) -> None:
    """One line per endpoint with its bound address, an allowed exposure warned about, one
    `started` line with version, file and listeners, and the stop logged; SIGTERM exits 0."""
    cfg = tmp_path / "filterd.toml"
    cfg.write_text('[log]\nformat = "json"\n[server]\nallow_non_loopback = true\n')
    sock_path = tmp_path / "milter.sock"
    with serving(tmp_path, "--config", str(cfg), "--proxy", "0.0.0.0:0",
                 "--milter", f"unix:{sock_path}", "--clamd", CLAMD) as served:  # fmt: skip
        events = served.wait_for("started")
        assert served.stop() == 0
        rest = served.events()[len(events) :]
    (started,) = [e for e in events if e["event"] == "started"]
    assert started["version"] == filterd.__version__
    assert started["config"] == str(cfg)
    listening = [e for e in events if e["event"] == "listening"]
    assert started["listeners"] == {e["endpoint"]: e["address"] for e in listening}
    assert [e["endpoint"] for e in listening] == ["proxy", f"milter unix:{sock_path}"]
    assert listening[0]["address"][0].startswith("0.0.0.0:")
    assert listening[0]["address"][0] != "0.0.0.0:0"  # the bound port
    assert listening[1]["address"] == [f"unix:{sock_path}"]
    (warning,) = [e for e in events if e["event"] == "listening beyond loopback"]
    assert (warning["level"], warning["key"]) == ("warning", "proxy.listen")
    assert [e["event"] for e in rest] == ["stopping", "stopped"]
    assert rest[0]["signal"] == "SIGTERM"


def test_without_a_file_the_started_line_says_defaults(tmp_path: Path) -> None:
    with serving(tmp_path, "--proxy", "127.0.0.1:0", "--clamd", CLAMD) as served:
        events = served.wait_for("started")
        assert served.stop() == 0
    (started,) = [e for e in events if e["event"] == "started"]
    assert started["config"] == "defaults"
    (address,) = started["listeners"]["proxy"]
    assert address.startswith("127.0.0.1:")
    assert address != "127.0.0.1:0"
