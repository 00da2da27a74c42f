"""What the Postfix benchmarks share: driving a private Postfix with smtp-source(1), and
starting and stopping the programs under test in order."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from tests.integration.proxy_chain import snippet_services
from tests.testbed.postfix import Postfix

SMTP_SOURCE = "/usr/sbin/smtp-source"
# Accepted mail is discarded after queueing: delivery is not what is measured.
DISCARD = {"default_transport": "discard", "relay_transport": "discard"}


class Startable(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


def smtp_source(
    postfix: Postfix, messages: int, sessions: int, size: int, *, one_per_session: bool = True
) -> float:
    """Seconds smtp-source takes to get `messages` accepted (it stops at the first error)."""
    # smtp-source(1) -d: "Don't disconnect after sending a message"; without it, one SMTP
    # session (so one filter connection) per message.
    per_message = [] if one_per_session else ["-d"]
    command = [
        SMTP_SOURCE, "-c", *per_message,
        "-m", str(messages), "-s", str(sessions), "-l", str(size),
        "-f", "sender@example.test", "-t", "someone@example.test",
        f"127.0.0.1:{postfix.smtpd_port}",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 (fixed argument list, our own values)
        command, capture_output=True, text=True, timeout=600, check=False
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"smtp-source failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return elapsed


def proxy_postfix(filter_port: int, downstream_port: int) -> Postfix:
    """A private Postfix with master.cf.d/proxy.cf: front smtpd -> filter_port, and the
    reinjection smtpd on downstream_port; accepted mail discarded."""
    return Postfix(
        "proxy",
        main_cf=DISCARD,
        services=snippet_services(),
        filter_port=filter_port,
        downstream_port=downstream_port,
    )


@contextlib.contextmanager
def running(*things: Startable) -> Iterator[None]:
    """Start each in order; close them in reverse order, also on failure."""
    try:
        for thing in things:
            thing.start()
        yield
    finally:
        for thing in reversed(things):
            thing.close()


@contextlib.contextmanager
def profiled(pid: int | None, output: str | None) -> Iterator[None]:
    """Sample process `pid` with py-spy (raw collapsed stacks, idle included) for the block.

    Nothing happens when `output` is None. py-spy is not a dependency of filterd: install it
    into the virtual environment (`.venv/bin/pip install py-spy`); bench/profile.py reads
    the file it writes.
    """
    if output is None or pid is None:
        yield
        return
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--idle",
               "--rate", "250", "--nonblocking", "--output", output]  # fmt: skip
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    time.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            sampler.wait(30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait(5)


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds process `pid` has used so far (Linux: /proc/PID/stat)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (proc(5), counted from field 3)
    return ticks / os.sysconf("SC_CLK_TCK")
