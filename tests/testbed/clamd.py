"""A private clamd for tests: own config, own tiny signature database, own sockets.

Never the system service and never freshclam (these machines are offline): the database is two
`.ndb` body signatures written here, one for EICAR and one for a marker string of our own, so
tests see two different virus names.

The EICAR test string is assembled at run time by `filterd.testing.eicar()`; it never appears
in one piece in this repository, so scanners of the repository do not flag it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import Final

from filterd.testing import eicar
from tests.testbed import common

CLAMD: Final = "/usr/sbin/clamd"

# Names as written in the .ndb file. clamd reports signatures that are not from an official,
# signed database with the suffix ".UNOFFICIAL" (measured: `stream: <name>.UNOFFICIAL FOUND`).
_EICAR_SIGNATURE: Final = "Filterd.Testbed.EICAR"
_SECOND_SIGNATURE: Final = "Filterd.Testbed.Marker"
EICAR_NAME: Final = _EICAR_SIGNATURE + ".UNOFFICIAL"
SECOND_NAME: Final = _SECOND_SIGNATURE + ".UNOFFICIAL"

# Our own marker: nothing else in the world should contain it.
SECOND_MARKER: Final = b"FILTERD-TESTBED-MARKER-7Q2ZK9W4-DO-NOT-DELIVER"

DEFAULT_STREAM_MAX_LENGTH: Final = 5 * 1024 * 1024
DEFAULT_MAX_THREADS: Final = 4


def eicar_bytes() -> bytes:
    """The 68-byte EICAR anti-virus test file, built at run time (`filterd.testing.eicar`)."""
    return eicar()


def second_sample_bytes() -> bytes:
    """A harmless line that our second signature flags as SECOND_NAME."""
    return b"filterd test bed sample: " + SECOND_MARKER + b"\r\n"


def signature_database() -> str:
    """The .ndb text: `Name:TargetType:Offset:HexSignature` (ClamAV signatures manual).

    Target type 0 (any file) and offset `*` (anywhere), so the strings are found in a plain
    stream, in a mail body and, because ScanMail is on, inside a decoded MIME part.
    """
    return (
        f"{_EICAR_SIGNATURE}:0:*:{eicar().hex()}\n{_SECOND_SIGNATURE}:0:*:{SECOND_MARKER.hex()}\n"
    )


class Clamd:
    """One private clamd process, restartable on the same socket path and TCP port."""

    def __init__(
        self,
        *,
        stream_max_length: int = DEFAULT_STREAM_MAX_LENGTH,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        self.stream_max_length: Final = stream_max_length
        self.max_threads: Final = max_threads
        self.directory = common.private_dir("filterd-clamd-")
        self.database_directory = self.directory / "db"
        self.socket_path = self.directory / "clamd.ctl"
        self.config_path = self.directory / "clamd.conf"
        self.log_path = self.directory / "clamd.log"
        self.output_path = self.directory / "clamd.out"
        self.tcp_port = common.free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.database_directory.mkdir()
        (self.database_directory / "filterd-testbed.ndb").write_text(signature_database())
        self._write_config()

    @property
    def name(self) -> str:
        return f"clamd[{self.directory}]"

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        return f"tcp:127.0.0.1:{self.tcp_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _write_config(self) -> None:
        # clamd.conf(5). Sizes are written in bytes so that stream_max_length is exact.
        lines = [
            "Foreground yes",
            f"DatabaseDirectory {self.database_directory}",
            f"LocalSocket {self.socket_path}",
            "LocalSocketMode 666",
            f"TCPSocket {self.tcp_port}",
            "TCPAddr 127.0.0.1",
            f"StreamMaxLength {self.stream_max_length}",
            f"MaxThreads {self.max_threads}",
            f"LogFile {self.log_path}",
            "LogTime yes",
            f"PidFile {self.directory / 'clamd.pid'}",
            # No official databases here, and no periodic database re-check during a test run.
            "SelfCheck 0",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start clamd and wait until both sockets answer PING with PONG."""
        if self._closed:
            raise common.StartupError("this clamd was closed")
        if self.is_running():
            return
        common.require_programs(CLAMD)
        with self.output_path.open("ab") as out:
            self._process = subprocess.Popen(
                [CLAMD, f"--config-file={self.config_path}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        common.register(self)
        process = self._process

        def ready() -> bool:
            if process.poll() is not None:
                output = common.tail(self.output_path)
                status = process.returncode
                raise common.StartupError(f"clamd exited with status {status}:\n{output}")
            return self.ping(timeout=0.5) and self.ping(timeout=0.5, tcp=True)

        try:
            common.wait_until(ready, timeout=timeout, what="clamd to answer PING", interval=0.01)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop clamd (SIGTERM, then SIGKILL after `timeout`); a no-op when it is stopped."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        self._process = None
        # clamd removes its socket on a clean exit; make sure a killed one leaves none behind.
        self.socket_path.unlink(missing_ok=True)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout=timeout)

    @contextlib.contextmanager
    def paused(self) -> Iterator[Clamd]:
        """Stop clamd for the duration of the block; restart it afterwards, even on failure."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def close(self) -> None:
        """Stop clamd for good and remove its directory."""
        self.stop()
        self._closed = True
        common.unregister(self)
        if self._process is None or not common.pid_alive(self._process.pid):
            common.remove_dir(self.directory)

    def command(self, command: bytes, *, tcp: bool = False, timeout: float = 5.0) -> bytes:
        """Send one `z`-prefixed command (clamd(8)) and return the reply without its NUL."""
        with self._connect(tcp=tcp, timeout=timeout) as conn:
            conn.sendall(b"z" + command + b"\0")
            return _read_reply(conn)

    def instream(self, data: bytes, *, tcp: bool = False, timeout: float = 10.0) -> bytes:
        """Scan `data` with INSTREAM (clamd(8)): <uint32 BE length><chunk>..., then length 0."""
        with self._connect(tcp=tcp, timeout=timeout) as conn:
            conn.sendall(b"zINSTREAM\0")
            for start in range(0, len(data), 65536):
                chunk = data[start : start + 65536]
                conn.sendall(struct.pack(">I", len(chunk)) + chunk)
            conn.sendall(struct.pack(">I", 0))
            return _read_reply(conn)

    def ping(self, *, tcp: bool = False, timeout: float = 1.0) -> bool:
        try:
            return self.command(b"PING", tcp=tcp, timeout=timeout) == b"PONG"
        except OSError:
            return False

    def log_text(self) -> str:
        return common.read_log(self.log_path)

    def _connect(self, *, tcp: bool, timeout: float) -> socket.socket:
        if tcp:
            return socket.create_connection(("127.0.0.1", self.tcp_port), timeout=timeout)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        try:
            conn.connect(str(self.socket_path))
        except BaseException:
            conn.close()
            raise
        return conn


def _read_reply(conn: socket.socket) -> bytes:
    reply = bytearray()
    while not reply.endswith(b"\0"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        reply += chunk
    return bytes(reply.rstrip(b"\0"))
