"""The client to the reinjection smtpd, against a small server on loopback: the content
arrives byte for byte, and the final "." comes only from end_data()."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from filterd.endpoints.proxy.downstream import CHUNK, Downstream


class Smtpd:
    """Greets, answers every command 250 (DATA 354), records what came after DATA."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.ended = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        try:
            while line := await reader.readline():
                if line.upper().startswith(b"DATA"):
                    writer.write(b"354 go on\r\n")
                    await self._body(reader, writer)
                else:
                    writer.write(b"250 ok\r\n")
        finally:
            writer.close()
            self.ended.set()

    async def _body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = bytearray()
        while True:
            line = await reader.readline()
            if not line:
                self.bodies.append(bytes(body))  # closed without the final dot
                return
            if line == b".\r\n":
                self.bodies.append(bytes(body) + b".\r\n")
                writer.write(b"250 2.0.0 Ok: queued as ABC123\r\n")
                return
            body += line


@pytest.fixture
async def smtpd() -> AsyncIterator[tuple[Smtpd, int]]:
    server = Smtpd()
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, limit=1 << 20)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server, port


BODY = [b"Subject: a\r\n\r\n", b"x" * (2 * CHUNK + 5) + b"\r\n", b"last line\r\n"]


async def test_the_body_in_pieces_then_the_dot(smtpd: tuple[Smtpd, int]) -> None:
    server, port = smtpd
    hop = await Downstream.connect("127.0.0.1", port, "filterd.test", io_timeout=5)
    assert (await hop.command(b"DATA")).code == 354
    await hop.send_body(BODY)
    reply = await hop.end_data()
    await hop.quit()
    assert (reply.code, reply.queue_id) == (250, "ABC123")
    assert server.bodies == [b"".join(BODY) + b".\r\n"]


async def test_abort_after_the_body_sends_no_dot(smtpd: tuple[Smtpd, int]) -> None:
    server, port = smtpd
    hop = await Downstream.connect("127.0.0.1", port, "filterd.test", io_timeout=5)
    await hop.command(b"DATA")
    await hop.send_body(BODY)
    hop.abort()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.ended.wait(), 5)
    assert len(server.bodies) == 1
    assert not server.bodies[0].endswith(b".\r\n"), "the message was completed"
    assert b"".join(BODY).startswith(server.bodies[0])
