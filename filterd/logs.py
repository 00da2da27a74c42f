"""structlog set-up: JSON lines for machines, a readable console on a terminal, or syslog.

Message bodies are never logged: log calls carry envelope facts, sizes, findings and verdicts.
Each output (stderr or the stream given, syslog) is one stdlib handler. The standard
library's records (purepythonmilter, asyncio) reach it through the root logger and its
`structlog.stdlib.ProcessorFormatter`; filterd's own events skip the stdlib record path (no
LogRecord, no caller lookup, no second processor pass): structlog's processors run once, the
wrapped logger (`LineLogger`) renders the event with that output's renderer and hands the
finished line to the same handler, so both kinds of line come out in one format, through
one lock, and a JSON log holds nothing but JSON objects. Third-party text cannot be trusted not
to quote protocol data (purepythonmilter puts the raw header packet into its exception
messages), so in messages and tracebacks every bytes literal is withheld.

Colours only on a terminal: the console format off a TTY (a pipe, a file, journald) is plain.

Syslog (`[log] syslog = true`): each line goes to the local syslog socket (`/dev/log`) with
facility `mail` by default, so it lands in /var/log/mail.log beside Postfix's lines, in the
shape Postfix's own tools read: `filterd[PID]: BODY`. The BODY is the same JSON object as a
JSON log line (lossless, one parser for both: `filterd report` reads either); the syslog
priority follows the level. Syslog replaces stderr; if the socket cannot be reached at start,
stderr keeps the lines too and a warning says so (like openlog(3), later sends retry).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import socket
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

MAX_TEXT = 500  # characters kept of a third-party message or an exception message
# purepythonmilter's debug lines quote whole packets (message and header bytes).
QUIET_LOGGERS = {"purepythonmilter": logging.INFO}
# A Python bytes literal as repr() writes it: b'...' or b"..." with backslash escapes.
_BYTES_LITERAL = re.compile(r"""(?<![\w'"])b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", re.DOTALL)
_BYTES_START = re.compile(r"""(?<![\w'"])b['"]""")
WITHHELD = "<bytes withheld>"
_PLAIN = frozenset({int, float, bool, type(None)})  # values that cannot carry bytes

_handlers: list[logging.Handler] = []


@dataclass(frozen=True, slots=True)
class Syslog:
    """Where syslog lines go: a UNIX datagram socket path and a facility name."""

    address: str = "/dev/log"
    facility: str = "mail"


def configure(
    log_format: LogFormat = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    syslog: Syslog | None = None,
) -> None:
    """Send filterd's and the standard library's log lines to `stream` (stderr), or to
    syslog when `syslog` is given."""
    out = sys.stderr if stream is None else stream
    use_console = log_format == "console" or (log_format == "auto" and out.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    number = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        safe_exception,
        withhold_bytes_values,
    ]
    outputs: list[Output] = []
    reached = False
    if syslog is not None:
        syslog_handler = syslog_handler_for(syslog)
        outputs.append(Output(syslog_handler, structlog.processors.JSONRenderer()))
        reached = connected(syslog_handler)
    if not reached:
        outputs.append(Output(logging.StreamHandler(out), renderer))
    for output in outputs:
        output.handler.setFormatter(LineFormatter(shared, output.render))
    structlog.configure(
        # The last processor returns the event dict: structlog passes it to the wrapped
        # logger's method as keyword arguments; LineLogger renders it for each output.
        processors=shared,
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=LineLoggerFactory(tuple(outputs)),
        cache_logger_on_first_use=False,
    )
    _install([output.handler for output in outputs], number)
    if syslog is not None and not reached:
        get_logger("filterd.logs").warning(
            "syslog socket not reachable; logging to stderr as well", address=syslog.address
        )


class QuietSysLogHandler(logging.handlers.SysLogHandler):
    """A send that fails (no syslogd at start, or one restarting) drops that line quietly,
    as syslog(3) does; the stdlib default prints a traceback to stderr for every line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - stdlib's name
        return


def syslog_handler_for(syslog: Syslog) -> logging.handlers.SysLogHandler:
    """A handler writing `<PRI>filterd[PID]: BODY` datagrams to `syslog.address`."""
    facility = logging.handlers.SysLogHandler.facility_names[syslog.facility]
    handler = QuietSysLogHandler(syslog.address, facility=facility, socktype=socket.SOCK_DGRAM)
    # The tag syslog(3) writes and Postfix's log readers expect; set again after a fork.
    handler.ident = f"filterd[{os.getpid()}]: "
    handler.append_nul = False  # a NUL ends only old syslogds' records; none of today's need it
    return handler


def connected(handler: logging.handlers.SysLogHandler) -> bool:
    """Whether the handler's socket is open (it stays closed when nobody listened at start)."""
    sock: socket.socket | None = getattr(handler, "socket", None)  # typeshed omits it
    return sock is not None and sock.fileno() != -1


@dataclass(frozen=True, slots=True)
class Output:
    """One place lines go: its stdlib handler and the renderer of its lines."""

    handler: logging.Handler
    render: Processor


class RenderedLine(logging.LogRecord):
    """A line of filterd's own, rendered already, on its way through a handler's `handle`
    (lock, `emit`, `handleError`). Only the attributes those read are set: far cheaper
    than a real record, for which the logger looks up the caller and the record reads the
    time, thread and process."""

    def __init__(self, levelname: str, line: str) -> None:  # no super(): nothing else read
        self.levelname = levelname
        self.msg = line  # what handleError prints when a write fails
        self.args = ()


class LineFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders the standard library's records like filterd's own events; passes a
    `RenderedLine` through as it is."""

    def __init__(self, shared: list[Processor], renderer: Processor) -> None:
        super().__init__(
            foreign_pre_chain=[withhold_bytes, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )

    def format(self, record: logging.LogRecord) -> str:
        if type(record) is RenderedLine:
            return str(record.msg)
        return super().format(record)


# The level a method of the wrapped logger stands for, as a LogRecord names it (syslog
# priority: SysLogHandler.mapPriority).
_LEVEL_NAMES = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR",
                "critical": "CRITICAL"}  # fmt: skip


class LineLogger:
    """The logger structlog wraps for filterd's own events. structlog calls the method of
    the event's level (`debug` ... `critical`, what `make_filtering_bound_logger` calls)
    with the processed event dict as keyword arguments; each output renders it and its
    handler writes the line."""

    __slots__ = ("name", "outputs")

    def __init__(self, name: str, outputs: Sequence[Output]) -> None:
        self.name = name  # structlog.stdlib.add_logger_name reads it
        self.outputs = outputs

    def _write(self, method: str, event_dict: EventDict) -> None:
        level = _LEVEL_NAMES[method]
        last = len(self.outputs) - 1
        for index, output in enumerate(self.outputs):
            # A renderer may change the dict it is given (ConsoleRenderer pops keys).
            given = event_dict if index == last else dict(event_dict)
            line = output.render(self, method, given)
            output.handler.handle(RenderedLine(level, str(line)))

    def debug(self, **event_dict: Any) -> None:
        self._write("debug", event_dict)

    def info(self, **event_dict: Any) -> None:
        self._write("info", event_dict)

    def warning(self, **event_dict: Any) -> None:
        self._write("warning", event_dict)

    def error(self, **event_dict: Any) -> None:
        self._write("error", event_dict)

    def critical(self, **event_dict: Any) -> None:
        self._write("critical", event_dict)


class LineLoggerFactory:
    """structlog's `logger_factory`: `get_logger(name)` makes a LineLogger of that name
    writing to this configuration's outputs. Without a name, the caller's module names
    it, as structlog's stdlib factory finds it."""

    def __init__(self, outputs: tuple[Output, ...]) -> None:
        self.outputs = outputs

    def __call__(self, *args: Any) -> LineLogger:
        name = args[0] if args else _caller_factory().name
        return LineLogger(str(name), self.outputs)


def _caller_factory() -> logging.Logger:
    return structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__])()


def _install(handlers: list[logging.Handler], number: int) -> None:
    """Replace this module's handlers on the root logger (one set per process)."""
    root = logging.getLogger()
    for old in _handlers:
        root.removeHandler(old)
        old.close()
    _handlers[:] = handlers
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(number)
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(number, floor))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def scrub(text: str) -> str:
    """`text` without bytes literals, and at most MAX_TEXT characters."""
    text = _BYTES_LITERAL.sub(WITHHELD, text)
    cut = _BYTES_START.search(text)
    if cut is not None:  # a literal cut short: keep nothing after its start
        text = text[: cut.start()] + WITHHELD
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def withhold_bytes(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """For standard library records: the message text, scrubbed."""
    event_dict["event"] = scrub(str(event_dict.get("event", "")))
    return event_dict


def withhold_bytes_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """No value carries protocol bytes: bytes are withheld, bytes literals in text too.

    A guard for every event (filterd's own included): an exception message passed as a
    value (`error=str(exc)`) may quote the packet that caused it.
    """
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:  # most values, and most have no b' or b" at all: two substring tests
            if ("b'" in value or 'b"' in value) and _BYTES_START.search(value):
                event_dict[key] = scrub(value)
        elif kind in _PLAIN:  # nothing to look at
            continue
        elif isinstance(value, (bytes, bytearray, memoryview)):
            event_dict[key] = f"<{len(value)} bytes withheld>"
        elif isinstance(value, str) and _may_quote_bytes(value) and _BYTES_START.search(value):
            event_dict[key] = scrub(value)
    return event_dict


def _may_quote_bytes(text: str) -> bool:
    """A bytes literal starts with b' or b": two substring searches rule out most text
    faster than the regular expression can."""
    return "b'" in text or 'b"' in text


def safe_exception(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Render `exc_info` as `exception`: the frames, and messages without bytes literals."""
    exc_info = event_dict.pop("exc_info", None)
    exc = _exception_of(exc_info)
    if exc is not None:
        event_dict["exception"] = exception_text(exc)
    return event_dict


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        value = exc_info[1] if len(exc_info) == 3 else None
        return value if isinstance(value, BaseException) else None
    if exc_info:
        return sys.exc_info()[1]
    return None


def exception_text(exc: BaseException) -> str:
    """A traceback like Python's; exception messages go through `safe_message`."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts = [_one_exception(item) for item in reversed(chain)]
    return "\nThe above exception led to the following one:\n\n".join(parts)


def _one_exception(exc: BaseException) -> str:
    frames = _frames(exc.__traceback__)
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    message = safe_message(exc)
    return f"{frames}{name}: {message}" if message else f"{frames}{name}"


def _frames(tb: TracebackType | None) -> str:
    if tb is None:
        return ""
    return "Traceback (most recent call last):\n" + "".join(
        traceback.format_list(traceback.extract_tb(tb))
    )


def safe_message(exc: BaseException) -> str:
    """The exception's message, unless its arguments are bytes; bytes literals withheld."""
    if any(isinstance(arg, (bytes, bytearray, memoryview)) for arg in exc.args):
        return f"<message withheld: {len(exc.args)} argument(s) include bytes>"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not break logging
        return "<unprintable message>"
    return scrub(text)


def reset() -> None:
    """Undo `configure` (tests that configure logging in their own process)."""
    root = logging.getLogger()
    for handler in _handlers:
        root.removeHandler(handler)
        handler.close()
    _handlers.clear()
    structlog.reset_defaults()
