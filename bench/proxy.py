"""Messages per second and added latency through a real Postfix with filterd as its
smtpd_proxy_filter, against the same Postfix with no filter.

    sudo .venv/bin/python -m bench.proxy [--messages N] [--sessions S] [--size BYTES] [--repeat R]

Needs root, Postfix and clamd (as the test bed does). It starts a private clamd, a
`filterd serve --proxy` process, and two private Postfix instances: one with a plain smtpd,
one with the master.cf.d/proxy.cf services (front smtpd -> filterd -> reinjection smtpd).
Postfix's smtp-source(1) drives each: S parallel sessions, N messages of BYTES, one message
per SMTP session. Accepted mail goes to Postfix's discard(8) transport, so the figure is the
before-queue path, not delivery. Throughput is the median of R runs; latency is the mean time
per message of one session sending messages one after another. The last lines are the ratio
proxy / no filter and the latency filterd adds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.figures import print_rates
from bench.load import DISCARD, cpu_seconds, profiled, proxy_postfix, running, smtp_source
from tests.testbed.clamd import Clamd
from tests.testbed.common import free_port, private_dir, remove_dir
from tests.testbed.postfix import Postfix


class FilterdProxy:
    """`filterd serve --proxy` as its own process, logging JSON lines to a file."""

    def __init__(self, listen_port: int, downstream_port: int, clamd_address: str) -> None:
        self.port = listen_port
        self.directory = private_dir("filterd-bench-proxy-")
        self.log_path = self.directory / "filterd.log"
        config = self.directory / "filterd.toml"
        config.write_text('[log]\nformat = "json"\n')
        self.command = [
            str(Path(sys.executable).with_name("filterd")), "serve", "--config", str(config),
            "--proxy", f"127.0.0.1:{listen_port}",
            "--downstream", f"127.0.0.1:{downstream_port}",
            "--clamd", clamd_address,
            "--workers", "1",  # one process: the CPU figure reads its /proc/PID/stat
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 (fixed argument list)
                self.command, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                if conn.recv(100).startswith(b"220"):
                    return
            time.sleep(0.05)
        sys.exit(f"filterd did not start:\n{self.log_text()[-2000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        remove_dir(self.directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--profile", help="py-spy raw output of one more run (bench/profile.py)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.proxy needs root (private Postfix instances)")

    clamd = Clamd()
    filter_port, downstream_port = free_port(), free_port()
    filterd = FilterdProxy(filter_port, downstream_port, clamd.address)
    plain = Postfix("plain", main_cf=DISCARD)
    proxy = proxy_postfix(filter_port, downstream_port)
    postfixes = {"no filter": plain, "filterd proxy": proxy}
    with running(clamd, filterd, plain, proxy):
        smtp_source(proxy, 50, 5, args.size)  # warm-up: first connections and scans
        rates: dict[str, list[float]] = {name: [] for name in postfixes}
        cpu: list[float] = []
        pid = filterd.process.pid if filterd.process else None
        for _ in range(args.repeat):
            for name, postfix in postfixes.items():
                used = cpu_seconds(pid)
                elapsed = smtp_source(postfix, args.messages, args.sessions, args.size)
                rates[name].append(args.messages / elapsed)
            cpu.append((cpu_seconds(pid) - used) / args.messages)
        with profiled(pid, args.profile):
            smtp_source(proxy, args.messages, args.sessions, args.size)
        latency = {
            name: smtp_source(postfix, args.latency_messages, 1, args.size) / args.latency_messages
            for name, postfix in postfixes.items()
        }
        log = filterd.log_text()
    accepted = log.count('"reason": "accepted"')
    errors = log.count('"level": "error"') + log.count('"level": "warning"')
    print(
        f"{args.messages} messages of {args.size} bytes, {args.sessions} parallel sessions, "
        f"one message per session, median of {args.repeat}"
    )
    print_rates(rates, cpu, filtered="filterd proxy", plain="no filter")
    for name, seconds in latency.items():
        print(f"{name:>15}: {seconds * 1000:7.2f} ms per message, one session")
    added = (latency["filterd proxy"] - latency["no filter"]) * 1000
    print(f"{'added latency':>15}: {added:7.2f} ms per message")
    print(f"{'filterd':>15}: {accepted} messages accepted, {errors} warnings/errors logged")


if __name__ == "__main__":
    main()
