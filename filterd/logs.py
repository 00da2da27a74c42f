"""structlog set-up: JSON lines for machines, a readable console on a terminal.

Message bodies are never logged: log calls carry envelope facts, sizes, findings and verdicts.
Every line goes through one stdlib handler whose `structlog.stdlib.ProcessorFormatter`
renders filterd's own events and the standard library's records (purepythonmilter, asyncio)
alike, so a JSON log holds nothing but JSON objects. Third-party text cannot be trusted not
to quote protocol data (purepythonmilter puts the raw header packet into its exception
messages), so in messages and tracebacks every bytes literal is withheld.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
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

_handler: logging.Handler | None = None


def configure(
    log_format: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Send filterd's and the standard library's log lines to `stream` (stderr)."""
    global _handler  # noqa: PLW0603 (one handler per process, replaced on reconfiguration)
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
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[withhold_bytes, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(number)
    _handler = handler
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
        if isinstance(value, (bytes, bytearray, memoryview)):
            event_dict[key] = f"<{len(value)} bytes withheld>"
        elif isinstance(value, str) and _BYTES_START.search(value):
            event_dict[key] = scrub(value)
    return event_dict


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
    global _handler  # noqa: PLW0603
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    structlog.reset_defaults()
