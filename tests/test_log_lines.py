"""filterd's own log lines skip the standard library's record path (filterd/logs.py,
`LineLogger`): every output gets the bytes the stdlib path wrote, and the standard
library's records still arrive through the same handlers."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from filterd import logs
from tests.tables import cases

# TimeStamper(fmt="iso", utc=True): the one part of a line that differs between two calls.
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

MESSAGE_FIELDS: dict[str, object] = {
    "endpoint": "proxy", "action": "accept", "reply": "250 2.0.0 Ok", "client": "192.0.2.7",
    "recipients": 1, "size": 10240, "bypass": None, "findings": [], "scan_time": 0.0012,
    "virus": None, "queue_id": "4Xyz1234", "session": 17,
}  # fmt: skip


def raise_and_log(log: Any) -> None:
    try:
        raise ValueError(b"header\x00bytes")
    except ValueError:
        log.exception("scan failed", queue_id="4Xyz1234")


# (id, the calls on a filterd logger); the level of the configuration is debug.
CALLS: list[tuple[str, Callable[[Any], object]]] = [
    ("canonical message line", lambda log: log.info("message", **MESSAGE_FIELDS)),
    ("debug line", lambda log: log.debug("milter session", what="connect", peer="[::1]")),
    ("warning, a bytes value withheld", lambda log: log.warning("odd", data=b"\x00body")),
    ("error, a text value quoting bytes", lambda log: log.error("bad", error="got b'DATA'")),
    ("critical, unicode and quotes", lambda log: log.critical("stop", why='é "q" \\ ✓')),
    ("exception with a bytes message", raise_and_log),
    ("msg and fatal aliases", lambda log: (log.msg("alias"), log.fatal("alias too"))),
    ("a logger without a name", lambda _: structlog.get_logger().warning("unnamed")),
]


def stdlib_path() -> None:
    """Send filterd's own events the way filterd did before `LineLogger`: a LogRecord per
    event (structlog.stdlib.LoggerFactory, `wrap_for_formatter`) into the same handlers,
    whose ProcessorFormatter then renders it."""
    processors = structlog.get_config()["processors"]
    structlog.configure(
        processors=[*processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
    )


def normalised(text: str) -> str:
    return TIMESTAMP.sub("TIMESTAMP", text)


def drained(out: io.StringIO) -> Callable[[], str]:
    """A reader of what `out` got since the last read."""

    def read() -> str:
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        return text

    return read


def both_paths(call: Callable[[Any], object], read: Callable[[], str], **configure: Any) -> None:
    """Log `call` through the new path, then through the stdlib path, into the outputs
    `configure` names; `read` returns (and consumes) what the outputs got so far."""
    logs.configure(level="debug", **configure)
    try:
        read()  # what configure logged itself
        call(logs.get_logger("filterd.test"))
        new = read()
        stdlib_path()
        call(logs.get_logger("filterd.test"))
        old = read()
    finally:
        logs.reset()
    assert new, "nothing written"
    assert normalised(new) == normalised(old)


@pytest.mark.parametrize(("log_format", "call"), [
    pytest.param(log_format, call, id=f"{log_format}: {name}")
    for log_format in ("json", "console") for name, call in CALLS
])  # fmt: skip
def test_a_stream_gets_the_bytes_of_the_stdlib_path(
    log_format: logs.LogFormat, call: Callable[[Any], object]
) -> None:
    out = io.StringIO()

    both_paths(call, drained(out), log_format=log_format, stream=out)


@pytest.mark.parametrize("call", cases(CALLS))
def test_a_file_gets_the_bytes_of_the_stdlib_path(
    tmp_path: Path, call: Callable[[Any], object]
) -> None:
    path = tmp_path / "filterd.log"
    with path.open("w", encoding="utf-8") as out:
        done = 0

        def read() -> str:
            nonlocal done
            text = path.read_text(encoding="utf-8")[done:]
            done += len(text)
            return text

        both_paths(call, read, log_format="json", stream=out)


def datagrams(sock: socket.socket) -> list[bytes]:
    """Every datagram that arrives until none has for 0.2 s."""
    sock.settimeout(0.2)
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            return got


@pytest.mark.parametrize("call", cases(CALLS))
def test_stderr_without_syslog_gets_the_bytes_of_the_stdlib_path(
    tmp_path: Path, call: Callable[[Any], object]
) -> None:
    """The syslog socket cannot be reached at start: stderr keeps the lines (console)."""
    out = io.StringIO()

    missing = logs.Syslog(str(tmp_path / "no-such-log"))
    both_paths(call, drained(out), log_format="console", stream=out, syslog=missing)


@pytest.mark.parametrize("call", cases(CALLS))
def test_syslog_gets_the_datagrams_of_the_stdlib_path(
    syslog_socket: tuple[socket.socket, Path], call: Callable[[Any], object]
) -> None:
    sock, path = syslog_socket
    out = io.StringIO()

    def read() -> str:
        return "\n".join(repr(datagram) for datagram in datagrams(sock))

    both_paths(call, read, log_format="console", stream=out, syslog=logs.Syslog(str(path)))
    assert out.getvalue() == ""


def test_the_canonical_line_bytes() -> None:
    """got/want of one line, whatever the paths agree on."""
    out = io.StringIO()
    logs.configure("json", "info", out)
    try:
        logs.get_logger("filterd.pipeline").info("message", **MESSAGE_FIELDS)
    finally:
        logs.reset()
    want = (
        '{"endpoint": "proxy", "action": "accept", "reply": "250 2.0.0 Ok", '
        '"client": "192.0.2.7", "recipients": 1, "size": 10240, "bypass": null, '
        '"findings": [], "scan_time": 0.0012, "virus": null, "queue_id": "4Xyz1234", '
        '"session": 17, "event": "message", "level": "info", "logger": "filterd.pipeline", '
        '"timestamp": "TIMESTAMP"}\n'
    )
    assert normalised(out.getvalue()) == want


def test_the_syslog_datagram_bytes(syslog_socket: tuple[socket.socket, Path]) -> None:
    sock, path = syslog_socket
    logs.configure("json", "info", io.StringIO(), syslog=logs.Syslog(str(path), "local3"))
    try:
        logs.get_logger("filterd.test").error("broken", n=1)
    finally:
        logs.reset()
    # RFC 3164 PRI: facility local3 (19) * 8 + severity error (3) = 155.
    want = (
        f'<155>filterd[{os.getpid()}]: {{"n": 1, "event": "broken", "level": "error", '
        '"logger": "filterd.test", "timestamp": "TIMESTAMP"}'
    )
    assert [normalised(datagram.decode()) for datagram in datagrams(sock)] == [want]


LEVELS = [
    ("info drops debug", "info", ["info", "warning", "error", "critical"]),
    ("warning drops info", "warning", ["warning", "error", "critical"]),
    ("error", "error", ["error", "critical"]),
    ("debug keeps all", "debug", ["debug", "info", "warning", "error", "critical"]),
]


def test_a_logger_without_a_name_is_named_by_its_module() -> None:
    out = io.StringIO()
    logs.configure("json", "info", out)
    try:
        structlog.get_logger().info("unnamed")
    finally:
        logs.reset()
    assert json.loads(out.getvalue())["logger"] == __name__


@pytest.mark.parametrize(("level", "want"), cases(LEVELS))
def test_level_filtering(level: str, want: list[str]) -> None:
    out = io.StringIO()
    logs.configure("json", level, out)
    try:
        log = logs.get_logger("filterd.test")
        for method in ("debug", "info", "warning", "error", "critical"):
            getattr(log, method)(method)
    finally:
        logs.reset()
    assert [json.loads(line)["level"] for line in out.getvalue().splitlines()] == want


def test_no_log_value_quotes_message_bytes() -> None:
    out = io.StringIO()
    logs.configure("json", "info", out)
    try:
        logs.get_logger("filterd.test").warning(
            "odd", raw=b"Subject: secret", text="it said b'Subject: secret'", cut="b'Subj"
        )
    finally:
        logs.reset()
    assert "secret" not in out.getvalue()
    (got,) = (json.loads(line) for line in out.getvalue().splitlines())
    assert (got["raw"], got["text"], got["cut"]) == (
        "<15 bytes withheld>",
        f"it said {logs.WITHHELD}",
        logs.WITHHELD,
    )


FOREIGN = ["purepythonmilter.server.connectionhandler", "asyncio"]


@pytest.mark.parametrize("name", FOREIGN)
def test_a_foreign_record_reaches_a_file_as_json(tmp_path: Path, name: str) -> None:
    path = tmp_path / "filterd.log"
    with path.open("w", encoding="utf-8") as out:
        logs.configure("json", "info", out)
        try:
            logging.getLogger(name).warning("lost %d connections", 2)
            logs.get_logger("filterd.test").info("own")
        finally:
            logs.reset()
    got = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(line["event"], line["level"], line["logger"]) for line in got] == [
        ("lost 2 connections", "warning", name),
        ("own", "info", "filterd.test"),
    ]


@pytest.mark.parametrize("name", FOREIGN)
def test_a_foreign_record_reaches_syslog_framed_like_filterds_own(
    syslog_socket: tuple[socket.socket, Path], name: str
) -> None:
    sock, path = syslog_socket
    logs.configure("json", "info", io.StringIO(), syslog=logs.Syslog(str(path)))
    try:
        logging.getLogger(name).error("gone")
        logs.get_logger("filterd.test").error("gone")
    finally:
        logs.reset()
    tag = f"<19>filterd[{os.getpid()}]: ".encode()  # mail (2) * 8 + error (3)
    foreign, own = datagrams(sock)
    assert foreign.startswith(tag)
    assert own.startswith(tag)
    assert json.loads(foreign.removeprefix(tag))["logger"] == name


def test_a_foreign_record_keeps_the_console_format() -> None:
    out = io.StringIO()
    logs.configure("console", "info", out)
    try:
        logging.getLogger("asyncio").warning("slow callback")
        logs.get_logger("asyncio").warning("slow callback")
    finally:
        logs.reset()
    foreign, own = normalised(out.getvalue()).splitlines()
    assert foreign == own  # same event, level and logger name: the same console line


def test_a_syslog_socket_gone_drops_lines_quietly_until_it_returns(
    syslog_socket: tuple[socket.socket, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """As syslog(3): no traceback per line while syslogd is away, lines again after."""
    sock, path = syslog_socket
    logs.configure("json", "info", io.StringIO(), syslog=logs.Syslog(str(path)))
    try:
        log = logs.get_logger("filterd.test")
        log.info("before")
        sock.close()
        path.unlink()
        for _ in range(3):
            log.info("while away")
            logging.getLogger("asyncio").warning("while away")
        back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        back.bind(str(path))
        back.settimeout(0.2)
        try:
            log.info("after")
            got = [json.loads(datagram.split(b": ", 1)[1])["event"] for datagram in datagrams(back)]
        finally:
            back.close()
    finally:
        logs.reset()
    assert got == ["after"]
    assert capsys.readouterr().err == ""


def test_logline_compare_times_both_paths() -> None:
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "bench.logline", "--lines", "50", "--repeat", "1",
               "--compare"]  # fmt: skip
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60,
                          check=True)  # fmt: skip
    figures = dict(line.split(":") for line in done.stdout.splitlines())
    assert [name.strip() for name in figures] == [
        "canonical line (info)",
        "same, stdlib record path",
        "filtered debug call",
        "dropped milter debug",
        "bare json.dumps + write",
    ]
    assert all(value.strip().endswith("us CPU") for value in figures.values())
