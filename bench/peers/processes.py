"""The programs of the peers bench, each a private child process with its own config file:
Postfix's smtp-sink(1) as the final destination, clamav-milter, clamsmtpd and rspamd.

None of them uses the system service, its config file or its directories. Facts about the
peers' options are from their Debian 12 packages (clamav-milter 1.4.6, clamsmtp 1.10,
rspamd 3.4) and their manual pages: clamav-milter.conf(5), clamsmtpd.conf(5).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Final

from bench.serve import Child
from tests.processes import accepts, close_server, terminate
from tests.testbed.common import StartupError, private_dir, register, tail
from tests.testbed.sink import Sink

SMTP_SINK: Final = "/usr/sbin/smtp-sink"
CLAMAV_MILTER: Final = "/usr/sbin/clamav-milter"
CLAMSMTPD: Final = "/usr/sbin/clamsmtpd"
RSPAMD: Final = "/usr/bin/rspamd"

_MESSAGES = re.compile(rb"mesg=(\d+)")


def greets(port: int, timeout: float = 2.0) -> bool:
    """An SMTP server on 127.0.0.1:`port` sends a 220 greeting (RFC 5321 §4.2)."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn,
    ):
        conn.settimeout(timeout)
        greeting = conn.recv(512).startswith(b"220")
        conn.sendall(b"QUIT\r\n")
        return greeting
    return False


class ChildProcess(Child):
    """One program started with a fixed argument list, its output in its private directory.

    Ready when something accepts TCP connections on `port` (a greeting is not waited for:
    clamsmtpd only greets once it reached its downstream, which starts later).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.directory = private_dir(f"filterd-peers-{self.label}-")
        self.output_path = self.directory / "output.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def write_config(self, name: str, settings: dict[str, object], separator: str) -> Path:
        """Write `name` in the private directory: one `key<separator>value` line a setting."""
        path = self.directory / name
        path.write_text("".join(f"{key}{separator}{value}\n" for key, value in settings.items()))
        return path

    def start(self, timeout: float = 60.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return  # already running (the test bed's Postfix starts its sink too)
        register(self)
        with self.output_path.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 (fixed argument list)
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not accepts("127.0.0.1", self.port, 0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StartupError(f"{self.name} did not start:\n{tail(self.output_path)}")
            time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.process, 10, kill_wait=5)

    def close(self) -> None:
        close_server(self)


class SmtpSink(Sink):
    """Postfix's smtp-sink(1) in place of the test bed's Python sink: Postfix relays every
    accepted message to it (`relayhost`), and it counts what it received (`-c`)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.port = port
        self.child = _SmtpSinkProcess(port)

    @property
    def pid(self) -> int:
        return self.child.pid

    def start(self, timeout: float = 10.0) -> None:
        self.child.start(timeout)

    def close(self) -> None:
        self.child.close()

    def received(self) -> int:
        """Messages received so far: smtp-sink's `-c` counter, "mesg=N", updated at each "."."""
        try:
            counts = _MESSAGES.findall(self.child.output_path.read_bytes())
        except OSError:
            return 0
        return int(counts[-1]) if counts else 0


class _SmtpSinkProcess(ChildProcess):
    label = "smtp-sink"

    def command(self) -> list[str]:
        # smtp-sink(1): -c counters, -u the user to run as (required as root), backlog 256.
        return [SMTP_SINK, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "256"]


class ClamavMilter(ChildProcess):
    """clamav-milter in the foreground, TCP Milter socket, clamd over its UNIX socket."""

    label = "clamav-milter"

    def __init__(self, port: int, clamd_socket: Path) -> None:
        super().__init__(port)
        # clamav-milter.conf(5): refuse viruses, tempfail when clamd fails; MaxFileSize above
        # the largest bench message, or bigger mail would pass unscanned.
        settings: dict[str, object] = {
            "Foreground": "yes",
            "MilterSocket": f"inet:{port}@127.0.0.1",
            "ClamdSocket": f"unix:{clamd_socket}",
            "OnClean": "Accept",
            "OnInfected": "Reject",
            "OnFail": "Defer",
            "AddHeader": "Replace",
            "MaxFileSize": "30M",
            "TemporaryDirectory": self.directory,
            "PidFile": self.directory / "clamav-milter.pid",
            "LogFile": self.directory / "clamav-milter.log",
            "LogTime": "yes",
        }
        self.config_path = self.write_config("clamav-milter.conf", settings, " ")

    def command(self) -> list[str]:
        return [CLAMAV_MILTER, "-c", str(self.config_path)]


class Clamsmtp(ChildProcess):
    """clamsmtpd in the foreground (`-d 1`): an smtpd_proxy_filter like filterd's proxy."""

    label = "clamsmtpd"

    def __init__(self, port: int, downstream_port: int, clamd_socket: Path) -> None:
        super().__init__(port)
        # clamsmtpd.conf(5). It writes each message to TempDirectory and has clamd scan the
        # file, so clamd (root here) must read it. Action "drop" is the default: a virus is
        # answered 250 and discarded (the bench sends none).
        settings: dict[str, object] = {
            "OutAddress": f"127.0.0.1:{downstream_port}",
            "Listen": f"127.0.0.1:{port}",
            "ClamAddress": clamd_socket,
            "TempDirectory": self.directory,
            "PidFile": self.directory / "clamsmtpd.pid",
            "Action": "drop",
        }
        self.config_path = self.write_config("clamsmtpd.conf", settings, ": ")

    def command(self) -> list[str]:
        return [CLAMSMTPD, "-f", str(self.config_path), "-d", "1"]
