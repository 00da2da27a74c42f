"""One Milter connection: bytes from the MTA to commands, responses back to bytes.

purepythonmilter decodes the commands; this module frames the packets and owns the loop that
purepythonmilter's server would run, because that one keeps message state per connection and
drops the connection on any exception (docs/explanation/milter.md).

Guarantees:
- commands are handled one at a time, in order; each answer (all header changes and the
  final reply of a message together) is written in one write, so a reply never waits for
  Nagle's algorithm and a delayed ACK (docs/explanation/design.md);
- bounded work per event-loop step (docs/explanation/milter.md): after `STEP_PACKETS` packets or
  `STEP_BYTES` bytes the loop yields, so a flood of tiny packets on one connection cannot
  stall the others;
- a packet that cannot be framed (a length over 64 KiB, or zero) ends the connection: the
  stream cannot be resynchronised, and Postfix applies milter_default_action;
- a connection that sends no packet for `idle_timeout` seconds (30 s before SMFIC_OPTNEG,
  which Postfix sends at once) is closed, and so is one that does not read its answers;
- the connection closes at SMFIC_QUIT, at end of input, or when the endpoint stops: then
  after the answer to the message in flight, or at once between messages;
- a message left unanswered when the connection ends gets its log line (session.abandon).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable
from typing import Any

from purepythonmilter.protocol.commands import chars_to_command_registry
from purepythonmilter.protocol.exceptions import (
    ProtocolViolation,
    ProtocolViolationPacket,
    ProtocolViolationPayload,
)
from purepythonmilter.protocol.packet import encode_payload

from filterd.endpoints.milter.replies import Response
from filterd.endpoints.milter.session import CloseConnection, MilterSession
from filterd.endpoints.net import tcp_socket
from filterd.logs import get_logger

_log = get_logger("filterd.milter")

# Sendmail milter protocol: MILTER_CHUNK_SIZE (65535) plus command byte and length.
READ_SIZE = 65536 + 4
MAX_PAYLOAD = 65536  # Postfix sends 65535 body bytes plus the command byte
# Work between two yields to the event loop: about a millisecond of packets, or four full
# body chunks (the inspector's cost is per byte).
STEP_PACKETS = 64
STEP_BYTES = 4 * 65536
# Postfix: milter8.c sends SMFIC_OPTNEG right after connecting and gives up on the milter
# after milter_connect_timeout (30 s): a connection silent for longer is not Postfix.
NEGOTIATION_TIMEOUT = 30.0
_PROGRESS = encode_payload(b"p")  # SMFIR_PROGRESS
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux tcp(7)


class IdleError(Exception):
    """No packet from the MTA (or no read of our answer) within the idle limit."""


class Framer:
    """Milter packets from a byte stream: a 4-byte length, then that many bytes.

    Written here rather than purepythonmilter's PacketDecoder, which copies the rest of its
    buffer after every packet (quadratic in the packets per read) and formats debug messages
    for every packet even when nothing is logged.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> bytes | None:
        """The next whole payload (command byte and data), or None until more arrives."""
        length = self._whole()
        if not length:
            return None
        buffer = self._buffer
        with memoryview(buffer) as view:
            payload = bytes(view[4 : 4 + length])  # one copy (a bytearray slice makes two)
        del buffer[: 4 + length]  # CPython: deleting from the front of a bytearray does not copy
        return payload

    def next_command(self) -> tuple[type[Any], bytes] | None:
        """`command_of(self.next())` with one copy of the data, not two (a body chunk is
        64 KiB), or None until more arrives."""
        length = self._whole()
        if not length:
            return None
        buffer = self._buffer
        kind = command_of(bytes(buffer[4:5]))[0]
        with memoryview(buffer) as view:
            data = bytes(view[5 : 4 + length])
        del buffer[: 4 + length]
        return kind, data

    def _whole(self) -> int:
        """The length of the next payload once it is all buffered, else 0."""
        buffer = self._buffer
        if len(buffer) < 4:  # the length field
            return 0
        length = int.from_bytes(buffer[:4], "big")
        if not 0 < length <= MAX_PAYLOAD:
            msg = f"packet length {length} is not 1 to {MAX_PAYLOAD}"
            raise ProtocolViolationPacket(msg)
        return length if len(buffer) >= 4 + length else 0


def command_of(payload: bytes) -> tuple[type[Any], bytes]:
    """The purepythonmilter command class a payload's first byte names, and its data.

    What purepythonmilter's PayloadDecoder.decode returns, from the same table, without a
    logger built per connection and a debug message formatted per packet (measured:
    docs/explanation/performance.md, "Fixed cost per message"). The Framer never gives an
    empty payload.
    """
    kind = chars_to_command_registry.get(payload[:1])
    if kind is None:
        msg = f"unknown Milter command {payload[:1]!r}"
        raise ProtocolViolationPayload(msg)
    return kind, payload[1:]


class MilterConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: MilterSession,
        idle_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session
        self.idle_timeout = idle_timeout
        self.packets = 0  # handled so far
        self.stopping = False
        self._framer = Framer()
        self._budget = (STEP_PACKETS, STEP_BYTES)  # packets, bytes until the next yield
        self._last_packet = asyncio.get_running_loop().time()
        self._tcp = tcp_socket(writer.get_extra_info("socket"))

    async def run(self) -> None:
        """Serve until QUIT, end of input, a framing error, idleness or stop; then close."""
        why = "mta_closed"
        try:
            await self._serve()
        except CloseConnection:
            pass
        except IdleError:
            why = "idle_timeout"
            _log.info("milter connection idle; closing", peer=self.session.peer,
                      idle_timeout=self._idle_limit())  # fmt: skip
        except ProtocolViolation as exc:
            why = "protocol_violation"
            _log.warning(
                "milter protocol violation; closing",
                peer=self.session.peer,
                error=type(exc).__name__,
                detail=str(exc) if isinstance(exc, ProtocolViolationPacket) else "",
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            self.session.abandon("shutting_down" if self.stopping else "cancelled")
            raise
        finally:
            self.writer.close()
        self.session.abandon("shutting_down" if self.stopping else why)

    def stop(self) -> None:
        """The endpoint is stopping: finish the message in flight, then close."""
        self.stopping = True
        if not self.session.in_progress:
            self.writer.close()  # the pending read ends with end of input

    async def _serve(self) -> None:
        while True:
            data = await self._read()
            if not data:
                return
            self._ack_now()
            self._framer.feed(data)
            await self._handle_buffered()

    async def _read(self) -> bytes:
        deadline = self._last_packet + self._idle_limit()
        try:
            async with asyncio.timeout_at(deadline):
                return await self.reader.read(READ_SIZE)
        except TimeoutError:
            raise IdleError from None

    def _idle_limit(self) -> float:
        if self.session.agreed is None:
            return min(NEGOTIATION_TIMEOUT, self.idle_timeout)
        return self.idle_timeout

    async def _handle_buffered(self) -> None:
        loop = asyncio.get_running_loop()
        while (command := self._framer.next_command()) is not None:
            self._last_packet = loop.time()
            self.packets += 1
            kind, data = command
            answer = await self.session.handle(kind, data, self.progress)
            if answer is not None:
                await self.send(answer)
            if self.stopping and not self.session.in_progress:
                raise CloseConnection
            if self._spent(1 + len(data)):
                await asyncio.sleep(0)  # let the other connections run

    def _spent(self, size: int) -> bool:
        """Count the work done (a payload of `size` bytes); True once a step's worth is
        done, and the loop must yield (docs/explanation/milter.md).

        The budget spans reads: a read that finds data already buffered does not yield.
        """
        packets, left = self._budget[0] - 1, self._budget[1] - size
        if packets <= 0 or left <= 0:
            self._budget = (STEP_PACKETS, STEP_BYTES)
            return True
        self._budget = (packets, left)
        return False

    def _ack_now(self) -> None:
        """Acknowledge what was read at once instead of up to 40 ms later.

        Postfix writes each Milter packet separately and, for the events filterd asked not to
        answer (SMFIP_NR_*), waits for nothing but the TCP acknowledgement: with Nagle's
        algorithm on Postfix's side and delayed ACKs on ours, each small write would stall.
        Linux: tcp(7) TCP_QUICKACK is not permanent, so it is set again after every read.
        """
        if self._tcp is not None:
            with contextlib.suppress(OSError):
                self._tcp.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    async def send(self, answer: Iterable[Response]) -> None:
        self.writer.write(b"".join(encode_payload(response.encode()) for response in answer))
        await self._drain()

    async def progress(self) -> None:
        self.writer.write(_PROGRESS)
        await self._drain()

    async def _drain(self) -> None:
        """Wait until the MTA reads; one that stops reading is treated as idle."""
        if self.writer.transport.get_write_buffer_size() == 0:
            # All written: drain() cannot block (it only reports a lost connection), so
            # no timer is set and cancelled for it, as for most answers.
            await self.writer.drain()
            return
        try:
            async with asyncio.timeout(self.idle_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise IdleError from None
