"""Logging: every line JSON in JSON mode (stdlib records too), no bytes, no colours off a TTY."""

from __future__ import annotations

import io
import json
import logging
import os
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

from filterd import config, logs
from tests.tables import cases
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


@pytest.mark.parametrize(("exc", "hidden"), cases(EXCEPTIONS))
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


def test_syslog_lines_are_tagged_json_with_the_mail_facility(
    syslog_socket: tuple[socket.socket, Path],
) -> None:
    sock, path = syslog_socket
    out = io.StringIO()
    logs.configure("json", "info", stream=out, syslog=logs.Syslog(str(path), "mail"))
    try:
        logs.get_logger("filterd.test").warning("hello", key="value")
        logging.getLogger("asyncio").info("from the stdlib")
    finally:
        logs.reset()
    got = [sock.recv(65536).decode() for _ in range(2)]
    # RFC 3164 PRI: facility mail (2) * 8 + severity; warning 4, info 6.
    want_prefix = f"filterd[{os.getpid()}]: "
    assert [line[: line.index(">") + 1] for line in got] == ["<20>", "<22>"]
    bodies = [line.split(">", 1)[1] for line in got]
    assert all(body.startswith(want_prefix) for body in bodies), bodies
    first, second = (json.loads(body.removeprefix(want_prefix)) for body in bodies)
    assert (first["event"], first["key"], first["level"]) == ("hello", "value", "warning")
    assert second["event"] == "from the stdlib"
    assert out.getvalue() == ""  # syslog replaces stderr
    assert "\x00" not in "".join(got)


def test_syslog_unreachable_keeps_stderr_and_says_so(tmp_path: Path) -> None:
    out = io.StringIO()
    missing = str(tmp_path / "no-such-socket")
    logs.configure("json", "info", stream=out, syslog=logs.Syslog(missing, "mail"))
    try:
        logs.get_logger("filterd.test").info("still seen")
    finally:
        logs.reset()
    events = [(line["event"], line.get("address")) for line in lines(out)]
    assert events == [
        ("syslog socket not reachable; logging to stderr as well", missing),
        ("still seen", None),
    ]


def test_filterd_serve_logs_to_syslog(
    tmp_path: Path, syslog_socket: tuple[socket.socket, Path]
) -> None:
    """A real `filterd serve` with [log] syslog: its start-up lines arrive on the socket."""
    sock, path = syslog_socket
    port = free_port()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(f'[log]\nsyslog = true\nsyslog_address = "{path}"\nsyslog_facility = "local3"\n')
    command = [sys.executable, "-m", "filterd.cli", "serve", "--config", str(cfg),
               "--milter", f"inet:127.0.0.1:{port}", "--clamd", "tcp:127.0.0.1:1"]  # fmt: skip
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            connect_when_listening(port).close()
            datagrams = [sock.recv(65536).decode()]
            while '"listening"' not in datagrams[-1]:
                datagrams.append(sock.recv(65536).decode())
        finally:
            process.terminate()
            _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert err == ""
    # local3 is facility 19: 19 * 8 + 6 (info) = 158.
    assert datagrams[-1].startswith(f"<158>filterd[{process.pid}]: {{"), datagrams[-1]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"syslog_facility": "mial"}, "log.syslog_facility: 'mial' is not one of"),
        ({"syslog_address": "dev/log"}, "log.syslog_address: 'dev/log' is not an absolute"),
    ],
    ids=["facility", "address"],
)
def test_bad_syslog_settings_name_the_key(table: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.from_mapping({"log": table})
