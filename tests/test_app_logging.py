"""Logging: every line JSON in JSON mode (stdlib records too), no bytes, no colours off a TTY."""

from __future__ import annotations

import io
import json
import logging
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from purepythonmilter.protocol import commands

from filterd import logs
from tests.testbed.common import free_port

SECRET = b"Subject\x00top secret header"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    yield out
    logs.reset()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("name", ["purepythonmilter.protocol.commands", "asyncio"])
def test_a_stdlib_warning_is_one_json_object(stream: io.StringIO, name: str) -> None:
    logging.getLogger(name).warning("something %s", "odd")
    (got,) = lines(stream)
    assert (got["event"], got["level"], got["logger"]) == ("something odd", "warning", name)


def test_purepythonmilter_debug_lines_stay_out(tmp_path: Path) -> None:
    """Its debug lines quote whole packets; even at level debug they are not written."""
    out = io.StringIO()
    logs.configure("json", "debug", stream=out)
    try:
        logging.getLogger("purepythonmilter.server.connectionhandler").debug("packet=%r", SECRET)
        logs.get_logger("filterd.test").debug("own debug line")
    finally:
        logs.reset()
    assert [line["event"] for line in lines(out)] == ["own debug line"]


def test_header_parse_traceback_carries_no_header_bytes(stream: io.StringIO) -> None:
    """purepythonmilter puts the raw header packet into its exception message."""
    try:
        commands.Header(data_raw=SECRET)
    except BaseException as exc:  # ProtocolViolation is a BaseException
        logs.get_logger("filterd.milter").error(
            "milter command failed", exc_info=(type(exc), exc, exc.__traceback__)
        )
    (got,) = lines(stream)
    assert "top secret" not in stream.getvalue()
    assert "ProtocolViolationCommandData: Header data should be NULL-terminated" in got["exception"]
    assert logs.WITHHELD in got["exception"]


# (id, exception, text that must not appear)
EXCEPTIONS = [
    ("bytes-argument", ValueError(b"top secret"), "top secret"),
    ("bytes-literal-in-text", ValueError("bad data=b'top secret'"), "top secret"),
    ("double-quoted-literal", ValueError('bad data=b"top \\" secret"'), "secret"),
    ("literal-cut-short", ValueError("bad data=b'top secret"), "top secret"),
    ("decode-error", UnicodeDecodeError("utf-8", b"top secret\xff", 10, 11, "bad"), "top secret"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "hidden"), [c[1:] for c in EXCEPTIONS], ids=[c[0] for c in EXCEPTIONS]
)
def test_third_party_exception_text_withholds_bytes(
    stream: io.StringIO, exc: BaseException, hidden: str
) -> None:
    logging.getLogger("asyncio").error("Task exception", exc_info=(type(exc), exc, None))
    (got,) = lines(stream)
    assert hidden not in stream.getvalue(), got
    assert type(exc).__name__ in got["exception"]


def test_cause_chain_is_rendered_and_scrubbed(stream: io.StringIO) -> None:
    try:
        try:
            raise KeyError("first")
        except KeyError as inner:
            raise ValueError(b"top secret") from inner
    except ValueError:
        logs.get_logger("filterd.test").exception("failed")
    text = lines(stream)[0]["exception"]
    assert "KeyError: 'first'" in text
    assert "ValueError: <message withheld" in text
    assert "top secret" not in text


def test_values_in_own_events_withhold_bytes(stream: io.StringIO) -> None:
    """e.g. `error=str(exc)` of a ProtocolViolation that quotes a packet."""
    logs.get_logger("filterd.test").warning(
        "violation", error="could not decode data=b'top secret'", raw=b"top secret"
    )
    (got,) = lines(stream)
    assert "top secret" not in stream.getvalue()
    assert got["raw"] == "<10 bytes withheld>"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("out", "coloured"), [(io.StringIO(), False), (Terminal(), True)],
                         ids=["pipe", "terminal"])  # fmt: skip
def test_console_colours_only_on_a_terminal(out: io.StringIO, coloured: bool) -> None:
    logs.configure("console", "info", stream=out)
    try:
        logs.get_logger("filterd.test").warning("hello", key="value")
        logging.getLogger("asyncio").warning("from the stdlib")
    finally:
        logs.reset()
    text = out.getvalue()
    assert ("\x1b[" in text) is coloured, repr(text)
    assert "hello" in text
    assert "from the stdlib" in text


def milter_packet(command: bytes, data: bytes = b"") -> bytes:
    """Sendmail milter protocol: 4-byte length, command byte, data."""
    return struct.pack("!I", len(command) + len(data)) + command + data


def read_packet(sock: socket.socket) -> bytes:
    size = struct.unpack("!I", sock.recv(4, socket.MSG_WAITALL))[0]
    return sock.recv(size, socket.MSG_WAITALL)


def test_filterd_serve_writes_only_json_lines(tmp_path: Path) -> None:
    """A real `filterd serve --milter`: purepythonmilter's own warning and its header-parse
    failure both come out as JSON objects, without the header bytes."""
    port = free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text('[log]\nformat = "json"\n')
    command = [sys.executable, "-m", "filterd.cli", "serve", "--config", str(cfg),
               "--milter", f"inet:127.0.0.1:{port}", "--clamd", "tcp:127.0.0.1:1"]  # fmt: skip
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            sock = connect_when_listening(port)
            with sock:
                sock.sendall(milter_packet(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF)))
                assert read_packet(sock)[:1] == b"O"
                # No angle brackets: purepythonmilter warns through the stdlib logger.
                sock.sendall(milter_packet(b"M", b"sender@example.test\x00"))
                sock.sendall(milter_packet(b"L", SECRET))  # not NUL-terminated: parse error
                sock.sendall(milter_packet(b"Q"))
                sock.recv(1)
        finally:
            process.terminate()
            _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "top secret" not in err
    events = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    warning = [e for e in events if e.get("logger") == "purepythonmilter.protocol.commands"]
    assert len(warning) == 1, events
    assert "angle brackets" in warning[0]["event"]
    (failed,) = [e for e in events if e["event"] == "milter command failed"]
    assert failed["error"] == "ProtocolViolationCommandData"
    assert "exception" not in failed  # a traceback could quote the header bytes


def connect_when_listening(port: int, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        return sock
