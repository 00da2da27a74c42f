"""A fake clamd for unit tests: speaks just enough of clamd(8) and records what it got.

Each connection reads one NUL-terminated command (or, after zIDSESSION, one command after
another until zEND, each answered `<id>: <reply>`, as clamd does). zPING gets `PONG` and
zVERSION a made-up version line, except in STALL mode, where they get no answer (a hung
clamd). For zINSTREAM it then reads
`<uint32 BE length><data>` chunks up to the zero-length one, keeping every length it saw,
and behaves as its `mode` says. Virus names used with it are made up.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass, field

SIZE_LIMIT_REPLY = b"INSTREAM size limit exceeded. ERROR\0"
FAKE_VERSION = "ClamAV 0.0.0/1/fake"
IDSESSION = b"zIDSESSION\0"
SHORT_REPLIES = {b"zPING\0": b"PONG\0", b"zVERSION\0": FAKE_VERSION.encode() + b"\0"}


Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


class Mode(enum.Enum):
    REPLY = "read the whole stream, wait `delay`, send `reply` as given, close"
    CLOSE_MID_STREAM = "read the command and one chunk, then hang up without a word"
    STALL = "read the whole stream and never answer"
    NO_READ = "accept the connection and never read from it"
    # clamd does this when a stream exceeds StreamMaxLength (clamd(8), INSTREAM).
    EARLY_REPLY = "after more than `limit` data bytes, send `reply` and close"


@dataclass
class Session:
    """What one connection sent."""

    command: bytes = b""
    lengths: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)

    @property
    def ended(self) -> bool:
        """The client sent the zero-length chunk that ends INSTREAM."""
        return bool(self.lengths) and self.lengths[-1] == 0


class FakeClamd:
    def __init__(
        self,
        mode: Mode = Mode.REPLY,
        *,
        reply: bytes = b"stream: OK\0",
        delay: float = 0.0,
        limit: int = 0,
    ) -> None:
        self.mode = mode
        self.reply = reply
        self.delay = delay
        self.limit = limit
        self.sessions: list[Session] = []
        self.in_flight = 0
        self.pings = 0
        self.max_in_flight = 0
        self.address = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[object]] = set()

    async def start_tcp(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"tcp:127.0.0.1:{port}"

    async def start_unix(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path)
        self.address = f"unix:{path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        session = Session()
        self.sessions.append(session)
        try:
            await self._serve(session, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up; what it sent is recorded
        finally:
            writer.close()
            self._handlers.discard(task)

    async def _serve(
        self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.mode is Mode.NO_READ:
            await asyncio.Event().wait()
        session.command = await reader.readuntil(b"\0")
        if session.command == IDSESSION:
            await self._id_session(reader, writer)
        else:
            await self._request(session, reader, writer, b"")

    async def _id_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """clamd(8), IDSESSION: requests numbered from 1, each reply `<id>: <reply>`; here
        one at a time. Each request is recorded as a session of its own."""
        number = 0
        while (command := await reader.readuntil(b"\0")) != b"zEND\0":
            number += 1
            request = Session(command=command)
            self.sessions.append(request)
            if not await self._request(request, reader, writer, b"%d: " % number):
                return

    async def _request(
        self,
        session: Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        prefix: bytes,
    ) -> bool:
        """Serve one command; True when its whole reply went out (a session may go on)."""
        if session.command in SHORT_REPLIES:
            return await self._short(session.command, reader, writer, prefix)
        # A scan counts as in flight until its reply is out: the client holds its slot
        # at least that long, so a client that keeps its limit never exceeds it here.
        self._enter()
        try:
            return await self._scan(session, reader, writer, prefix)
        finally:
            self.in_flight -= 1

    async def _scan(self, session: Session, reader: Reader, writer: Writer, prefix: bytes) -> bool:
        while not session.ended:
            await self._read_chunk(session, reader)
            if self.mode is Mode.CLOSE_MID_STREAM:
                return False
            if self.mode is Mode.EARLY_REPLY and len(session.data) > self.limit:
                writer.write(prefix + self.reply)
                await writer.drain()
                return False
        if self.mode is Mode.STALL:
            await reader.read()  # until the client gives up and hangs up
            return False
        await asyncio.sleep(self.delay)
        writer.write(prefix + self.reply)
        await writer.drain()
        return True

    async def _short(self, command: bytes, reader: Reader, writer: Writer, prefix: bytes) -> bool:
        self.pings += command == b"zPING\0"
        if self.mode is Mode.STALL:
            await reader.read()
            return False
        writer.write(prefix + SHORT_REPLIES[command])
        await writer.drain()
        return True

    @property
    def scans(self) -> list[Session]:
        """The INSTREAM sessions only."""
        return [session for session in self.sessions if session.command == b"zINSTREAM\0"]

    async def _read_chunk(self, session: Session, reader: asyncio.StreamReader) -> None:
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        session.lengths.append(length)
        session.data += await reader.readexactly(length)

    def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
