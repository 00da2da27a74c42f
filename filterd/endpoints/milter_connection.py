"""One Milter connection: bytes from Postfix to commands, responses back to bytes.

purepythonmilter's protocol layer does the packet framing and the command decoding; this
module owns the loop that purepythonmilter's server would run, because that one keeps
message state per connection and drops the connection on any exception (peers.md §3.1).

Guarantees:
- commands are handled one at a time, in order; each answer (all header changes and the
  final reply of a message together) is written in one write, so a reply never waits for
  Nagle's algorithm and a delayed ACK (DESIGN.md §7);
- a packet that cannot be framed (a length over 64 KiB, or zero) ends the connection: the
  stream cannot be resynchronised, and Postfix applies milter_default_action;
- the connection closes at SMFIC_QUIT, at end of input, or when the endpoint stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable

from purepythonmilter.api import models
from purepythonmilter.protocol.exceptions import ProtocolViolation
from purepythonmilter.protocol.packet import PacketDecoder, encode_payload
from purepythonmilter.protocol.payload import PayloadDecoder

from filterd.endpoints.milter_replies import Response
from filterd.endpoints.milter_session import CloseConnection, MilterSession
from filterd.logs import get_logger

_log = get_logger("filterd.milter")

# Sendmail milter protocol: MILTER_CHUNK_SIZE (65535) plus command byte and length.
READ_SIZE = 65536 + 4
_PROGRESS = encode_payload(b"p")  # SMFIR_PROGRESS
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux tcp(7)


class MilterConnection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: MilterSession
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session
        connection_id = models.MilterServerConnectionID.generate()
        self._packets = PacketDecoder(connection_id=connection_id)
        self._payloads = PayloadDecoder(connection_id=connection_id)
        sock = writer.get_extra_info("socket")
        tcp = sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
        self._tcp: socket.socket | None = sock if tcp else None

    async def run(self) -> None:
        """Serve until QUIT, end of input or a framing error; then close the socket."""
        try:
            await self._serve()
        except CloseConnection:
            pass
        except ProtocolViolation as exc:
            _log.warning(
                "milter protocol violation; closing", peer=self.session.peer, error=str(exc)
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()

    async def _serve(self) -> None:
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return
            self._ack_now()
            for payload in self._packets.decode(data):
                kind, body = self._payloads.decode(payload)
                answer = await self.session.handle(kind, body, self.progress)
                if answer is not None:
                    await self.send(answer)

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
        await self.writer.drain()

    async def progress(self) -> None:
        self.writer.write(_PROGRESS)
        await self.writer.drain()
