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


class GroupingSmtpd:
    """Offers PIPELINING and answers a group only once all of it arrived: XFORWARD and MAIL
    together, and the final "." only with the QUIT after it. A client that waited for each
    reply before sending the next line would wait forever (and time out)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        try:
            self.lines.append(await reader.readline())  # EHLO ends its group
            writer.write(b"250-test\r\n250-XFORWARD NAME ADDR\r\n250 PIPELINING\r\n")
            self.lines += [await reader.readline(), await reader.readline()]
            writer.write(b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n")
            self.lines.append(await reader.readline())  # DATA ends its group
            writer.write(b"354 go on\r\n")
            while (line := await reader.readline()) not in (b".\r\n", b""):
                self.lines.append(line)
            self.lines += [line, await reader.readline()]
            writer.write(b"250 2.0.0 Ok: queued as ABC123\r\n221 2.0.0 Bye\r\n")
        finally:
            writer.close()


async def test_with_pipelining_a_group_goes_in_one_write() -> None:
    server = GroupingSmtpd()
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        hop = await Downstream.connect("127.0.0.1", port, "filterd.test", io_timeout=5)
        assert hop.pipelining
        group = [b"XFORWARD ADDR=192.0.2.7", b"MAIL FROM:<a@example.org>"]
        got = [reply.code for reply in await hop.commands(group)]
        assert got == [250, 250]
        assert (await hop.command(b"DATA")).code == 354
        await hop.send_body([b"Subject: a\r\n\r\nbody\r\n"])
        reply = await hop.end_data()
        await hop.quit()
    assert (reply.code, reply.queue_id) == (250, "ABC123")
    want = [b"EHLO filterd.test\r\n", *(line + b"\r\n" for line in group), b"DATA\r\n",
            b"Subject: a\r\n", b"\r\n", b"body\r\n", b".\r\n", b"QUIT\r\n"]  # fmt: skip
    assert server.lines == want


async def test_without_pipelining_each_command_waits(smtpd: tuple[Smtpd, int]) -> None:
    server, port = smtpd
    hop = await Downstream.connect("127.0.0.1", port, "filterd.test", io_timeout=5)
    assert not hop.pipelining
    replies = await hop.commands([b"XFORWARD ADDR=192.0.2.7", b"MAIL FROM:<a@example.org>"])
    assert [reply.code for reply in replies] == [250, 250]
    assert (await hop.command(b"DATA")).code == 354
    await hop.send_body([b"x\r\n"])
    assert (await hop.end_data()).code == 250
    await hop.quit()  # QUIT only now: the smtpd did not offer PIPELINING
    await asyncio.wait_for(server.ended.wait(), 5)
    assert server.bodies == [b"x\r\n.\r\n"]
