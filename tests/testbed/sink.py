"""An SMTP sink that records every message byte-exact, with its envelope.

Why our own small server rather than aiosmtpd or smtp-sink:
- aiosmtpd 1.4.6 answers 555 to every RCPT TO parameter, so it cannot advertise DSN, and then
  Postfix's smtp client drops NOTIFY/ORCPT/RET/ENVID: tests could not see them arrive.
- smtp-sink's dumps are files in its own format, read by polling; here the messages are Python
  objects, and a waiting test wakes as soon as one is stored.
- It is a strict judge: DATA ends only at CRLF "." CRLF (RFC 5321 §4.1.1.4), so a bare LF
  followed by "." CRLF that a filter let through shows up in `raw_data` instead of ending the
  message early.

It runs in a thread with its own asyncio loop, so synchronous and async tests can both use it.
Each reply is written with one write and TCP_NODELAY, so it does not add Nagle delays to
benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.testbed.common import StartupError, register, unregister

_HOSTNAME = "sink.example.test"
_MAX_LINE = 1 << 20  # bytes per line; Postfix may send long unfolded lines


@dataclass(frozen=True)
class SinkMessage:
    """One accepted transaction, as the sink received it."""

    helo: str
    mail_from: str
    """The reverse-path without angle brackets ("" for the null sender)."""
    mail_params: tuple[str, ...]
    """ESMTP parameters of MAIL FROM, verbatim (e.g. "SIZE=327", "RET=HDRS", "ENVID=x")."""
    rcpt_to: tuple[str, ...]
    rcpt_params: tuple[tuple[str, ...], ...]
    """Per recipient, its ESMTP parameters verbatim (e.g. "NOTIFY=SUCCESS", "ORCPT=rfc822;b@x")."""
    raw_data: bytes
    """Everything between the 354 reply and the final "." line, still dot-stuffed."""
    content: bytes
    """`raw_data` with dot-stuffing removed (RFC 5321 §4.5.2): the message as queued."""
    peer: tuple[str, int]
    received_at: float = field(compare=False)

    @property
    def headers(self) -> bytes:
        """The header section, up to and including the CRLF that ends the last header."""
        head, sep, _ = self.content.partition(b"\r\n\r\n")
        return head + b"\r\n" if sep else self.content

    @property
    def body(self) -> bytes:
        """Everything after the first empty line."""
        _, sep, body = self.content.partition(b"\r\n\r\n")
        return body if sep else b""

    def header_values(self, name: str) -> list[str]:
        """Values of header `name` (case-insensitive), unfolded, in order."""
        wanted = name.lower().encode()
        values: list[str] = []
        in_wanted = False  # is the header being continued one of the wanted ones?
        for line in self.headers.split(b"\r\n"):
            if line[:1] in {b" ", b"\t"}:  # RFC 5322 §2.2.3: folding continues the last header
                if in_wanted:
                    values[-1] += " " + line.strip().decode(errors="replace")
                continue
            key, colon, value = line.partition(b":")
            in_wanted = bool(colon) and key.strip().lower() == wanted
            if in_wanted:
                values.append(value.strip().decode(errors="replace"))
        return values


@dataclass
class _Transaction:
    helo: str = ""
    mail_from: str | None = None
    mail_params: tuple[str, ...] = ()
    rcpt_to: list[str] = field(default_factory=list)
    rcpt_params: list[tuple[str, ...]] = field(default_factory=list)


class Sink:
    """A threaded SMTP sink on 127.0.0.1; the OS picks the port unless one is given."""

    def __init__(self, port: int = 0) -> None:
        self._requested_port = port
        self.port = 0
        self.data_reply: str | None = None
        """When set (e.g. "451 4.3.0 try later"), the end-of-data reply; the message is dropped."""
        self._messages: list[SinkMessage] = []
        self._connections = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def name(self) -> str:
        return f"sink[127.0.0.1:{self.port}]"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def relayhost(self) -> str:
        """The Postfix `relayhost` value that delivers here without MX lookups."""
        return f"[127.0.0.1]:{self.port}"

    # --- results ----------------------------------------------------------------------------

    @property
    def messages(self) -> list[SinkMessage]:
        with self._cond:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """How many SMTP connections were accepted so far."""
        with self._cond:
            return self._connections

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until at least `n` messages arrived; return all of them, oldest first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"sink: expected {n} message(s) within {timeout:g}s, "
                        f"got {len(self._messages)}"
                    )
                self._cond.wait(left)
            return list(self._messages)

    def assert_quiet(self, window: float = 0.5, expected_total: int | None = None) -> None:
        """Assert that no (more) message arrives within `window` seconds.

        `expected_total` defaults to the number of messages present when called.
        """
        with self._cond:
            expected = len(self._messages) if expected_total is None else expected_total
            deadline = time.monotonic() + window
            while len(self._messages) <= expected:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            got = len(self._messages)
        assert got == expected, f"sink: expected {expected} message(s) in total, got {got}"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="testbed-sink", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout) or self._error is not None:
            self.close()
            raise StartupError(f"sink did not start: {self._error!r}")
        register(self)

    def stop(self, timeout: float = 5.0) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        self._thread = None

    def close(self) -> None:
        self.stop()
        unregister(self)

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # reported to start() through self._error
            self._error = exc
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._session(reader, writer)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(
            on_connect, "127.0.0.1", self._requested_port, limit=_MAX_LINE, backlog=512
        )
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop_event.wait()
            server.close()
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername") or ("?", 0)
        with self._cond:
            self._connections += 1
        session = _Session(self, reader, writer, (str(peer[0]), int(peer[1])))
        try:
            await session.run()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def store(self, message: SinkMessage) -> int:
        """Record `message` (used by the sink's sessions) and wake waiting tests."""
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()
            return len(self._messages)


class _Session:
    """One SMTP connection to the sink; one method per command (RFC 5321 §4.1.1)."""

    def __init__(
        self,
        sink: Sink,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: tuple[str, int],
    ) -> None:
        self.sink = sink
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.tx = _Transaction()
        self.handlers: dict[str, Callable[[str], Awaitable[bool]]] = {
            "EHLO": self.ehlo,
            "HELO": self.helo,
            "MAIL": self.mail,
            "RCPT": self.rcpt,
            "DATA": self.data,
            "RSET": self.rset,
            "NOOP": self.noop,
            "QUIT": self.quit,
        }

    async def reply(self, text: str) -> None:
        # One write per reply: a multi-line reply leaves in one segment.
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.reply(f"220 {_HOSTNAME} ESMTP filterd test bed sink")
        while True:
            line = await self.reader.readuntil(b"\n")
            command = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
            handler = self.handlers.get(command.split(" ", 1)[0].upper())
            if handler is None:
                await self.reply("502 5.5.2 Error: command not recognized")
            elif not await handler(command):
                return

    async def ehlo(self, command: str) -> bool:
        self.tx = _Transaction(helo=command[5:].strip())
        # RFC 5321 §4.1.1.1; keywords from RFC 2920, 1870, 6152, 3461, 6531, 2034.
        await self.reply(
            f"250-{_HOSTNAME}\r\n250-PIPELINING\r\n250-SIZE\r\n250-8BITMIME\r\n"
            "250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES"
        )
        return True

    async def helo(self, command: str) -> bool:
        self.tx = _Transaction(helo=command[5:].strip())
        await self.reply(f"250 {_HOSTNAME}")
        return True

    async def mail(self, command: str) -> bool:
        address, params = _path_and_params(command, "MAIL FROM:")
        if address is None:
            await self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
        else:
            self.tx = _Transaction(helo=self.tx.helo, mail_from=address, mail_params=params)
            await self.reply("250 2.1.0 Ok")
        return True

    async def rcpt(self, command: str) -> bool:
        address, params = _path_and_params(command, "RCPT TO:")
        if self.tx.mail_from is None:
            await self.reply("503 5.5.1 Error: need MAIL command")
        elif not address:
            await self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
        else:
            self.tx.rcpt_to.append(address)
            self.tx.rcpt_params.append(params)
            await self.reply("250 2.1.5 Ok")
        return True

    async def data(self, command: str) -> bool:
        tx = self.tx
        if tx.mail_from is None or not tx.rcpt_to:
            await self.reply("503 5.5.1 Error: need RCPT command")
            return True
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        raw = await _read_data(self.reader)
        self.tx = _Transaction(helo=tx.helo)
        data_reply = self.sink.data_reply
        if data_reply is not None:
            await self.reply(data_reply)
            return True
        number = self.sink.store(
            SinkMessage(
                helo=tx.helo,
                mail_from=tx.mail_from,
                mail_params=tx.mail_params,
                rcpt_to=tuple(tx.rcpt_to),
                rcpt_params=tuple(tx.rcpt_params),
                raw_data=raw,
                content=_unstuff(raw),
                peer=self.peer,
                received_at=time.time(),
            )
        )
        await self.reply(f"250 2.0.0 Ok: stored as sink-{number}")
        return True

    async def rset(self, command: str) -> bool:
        self.tx = _Transaction(helo=self.tx.helo)
        await self.reply("250 2.0.0 Ok")
        return True

    async def noop(self, command: str) -> bool:
        await self.reply("250 2.0.0 Ok")
        return True

    async def quit(self, command: str) -> bool:
        await self.reply("221 2.0.0 Bye")
        return False


async def _read_data(reader: asyncio.StreamReader) -> bytes:
    """Read DATA content up to CRLF "." CRLF; a "." line after a bare LF does not end it."""
    data = bytearray()
    while True:
        line = await reader.readuntil(b"\n")
        if line == b".\r\n" and (not data or data.endswith(b"\r\n")):
            return bytes(data)
        data += line


def _unstuff(raw: bytes) -> bytes:
    # RFC 5321 §4.5.2: drop the first "." of every line that starts with one.
    lines = raw.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def _path_and_params(command: str, prefix: str) -> tuple[str | None, tuple[str, ...]]:
    """Split "MAIL FROM:<a@b> SIZE=1" into ("a@b", ("SIZE=1",)); None on a syntax error."""
    if command[: len(prefix)].upper() != prefix:
        return None, ()
    rest = command[len(prefix) :].lstrip()
    if not rest.startswith("<") or ">" not in rest:
        return None, ()
    path, _, params = rest[1:].partition(">")
    return path, tuple(params.split())
