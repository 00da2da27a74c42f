"""A small Milter client that speaks like Postfix 3.7 (milter8.c), from raw packets.

It is written from the Sendmail milter protocol, not from filterd's or purepythonmilter's code,
so the tests judge the endpoint independently. Each command is one packet: a 4-byte length,
the command byte, the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

# Sendmail milter protocol, SMFIP_* / SMFIF_* bits Postfix 3.7 offers (SMFI_CURR_PROT, ACTS).
POSTFIX_ACTIONS = 0x1FF
POSTFIX_PROTOCOL = 0x1FFFFF
NR_FLAGS = {
    "connect": 0x1000,
    "mail": 0x4000,
    "rcpt": 0x8000,
    "header": 0x80,
    "body": 0x80000,
    "helo": 0x2000,
}
# Replies that end the wait for a command's answer (everything but modifications and 'p').
FINAL = frozenset(b"acrtdy4f")


@dataclass(frozen=True, slots=True)
class Reply:
    code: str  # one character, e.g. "y"
    data: bytes

    @property
    def text(self) -> str:
        return self.data.rstrip(b"\0").decode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class Negotiated:
    version: int
    actions: int
    protocol: int
    macros: bytes

    def replies_to(self, stage: str) -> bool:
        return not self.protocol & NR_FLAGS[stage]


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(command) + len(data)) + command + data


def macros(stage: bytes, pairs: dict[str, str]) -> bytes:
    data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs.items())
    return packet(b"D", stage + data)


class MilterClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.negotiated: Negotiated | None = None
        self.event_replies: list[Reply] = []  # answers to RCPT, header, body when not NR_*

    @classmethod
    async def open_tcp(cls, host: str, port: int) -> MilterClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    @classmethod
    async def open_unix(cls, path: str) -> MilterClient:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def send(self, *packets: bytes) -> None:
        self.writer.write(b"".join(packets))
        await self.writer.drain()

    async def read_reply(self, wait: float = 5.0) -> Reply:
        async with asyncio.timeout(wait):
            head = await self.reader.readexactly(4)
            (length,) = struct.unpack("!I", head)
            body = await self.reader.readexactly(length)
        return Reply(chr(body[0]), body[1:])

    async def read_until_final(self, wait: float = 5.0) -> list[Reply]:
        replies: list[Reply] = []
        while True:
            reply = await self.read_reply(wait)
            replies.append(reply)
            if ord(reply.code) in FINAL:
                return replies

    async def negotiate(
        self, actions: int = POSTFIX_ACTIONS, protocol: int = POSTFIX_PROTOCOL
    ) -> Negotiated:
        """SMFIC_OPTNEG offering `actions` and `protocol` (Postfix 3.7 offers everything)."""
        data = struct.pack("!III", 6, actions, protocol)
        await self.send(packet(b"O", data))
        reply = await self.read_reply()
        assert reply.code == "O", reply
        version, actions, protocol = struct.unpack("!III", reply.data[:12])
        self.negotiated = Negotiated(version, actions, protocol, reply.data[12:])
        return self.negotiated

    def _replies(self, stage: str) -> bool:
        assert self.negotiated is not None
        return self.negotiated.replies_to(stage)

    async def connect(
        self, client: str = "192.0.2.10", port: int = 40000, pairs: dict[str, str] | None = None
    ) -> Reply | None:
        """SMFIC_CONNECT for an IPv4 client, after its macros (Postfix sends v, j...)."""
        pairs = {"v": "Postfix 3.7.11", "j": "mx.example.test"} if pairs is None else pairs
        info = b"client.example.test\x004" + struct.pack("!H", port) + client.encode() + b"\0"
        await self.send(macros(b"C", pairs), packet(b"C", info))
        return await self.read_reply() if self._replies("connect") else None

    async def mail(self, sender: str, pairs: dict[str, str] | None = None) -> Reply | None:
        await self.send(macros(b"M", pairs or {}), packet(b"M", f"<{sender}>\0".encode()))
        return await self.read_reply() if self._replies("mail") else None

    async def rcpt(self, recipient: str) -> None:
        await self._event("rcpt", [packet(b"R", f"<{recipient}>\0".encode())])

    async def headers(self, items: Iterable[tuple[str, str]]) -> None:
        # Postfix: with SMFIP_HDR_LEADSPC the value is sent as it follows the colon.
        await self._event("header", [packet(b"L", f"{n}\0{v}\0".encode()) for n, v in items])

    async def body(self, data: bytes, chunk: int = 65535) -> None:
        # Postfix: milter8.c sends the body in MILTER_CHUNK_SIZE pieces.
        chunks = [packet(b"B", data[i : i + chunk]) for i in range(0, len(data), chunk)]
        await self._event("body", chunks)

    async def _event(self, stage: str, packets: list[bytes]) -> None:
        """Send the packets; where the milter must answer each (no SMFIP_NR_*), read it."""
        if not self._replies(stage):
            await self.send(*packets)
            return
        for one in packets:
            await self.send(one)
            self.event_replies.append(await self.read_reply())

    async def end_of_message(self, queue_id: str = "ABC123", wait: float = 5.0) -> list[Reply]:
        await self.send(macros(b"E", {"i": queue_id}), packet(b"E"))
        return await self.read_until_final(wait)

    async def abort(self) -> None:
        await self.send(packet(b"A"))

    async def quit(self) -> None:
        await self.send(packet(b"Q"))

    async def message(
        self,
        sender: str,
        recipients: list[str],
        headers: list[tuple[str, str]],
        body: bytes,
        mail_macros: dict[str, str] | None = None,
    ) -> list[Reply]:
        """One whole message as Postfix sends it, ABORT included; the end-of-message replies."""
        reply = await self.mail(sender, mail_macros)
        if reply is not None and reply.code != "c":
            await self.abort()
            return [reply]
        for recipient in recipients:
            await self.rcpt(recipient)
        await self.headers(headers)
        await self.body(body)
        replies = await self.end_of_message()
        await self.abort()  # Postfix sends ABORT after every message (docs/explanation/milter.md)
        return replies
