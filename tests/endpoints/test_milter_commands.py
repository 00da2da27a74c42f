"""A payload's command class and data: the same as purepythonmilter's PayloadDecoder gives."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from purepythonmilter.api import models
from purepythonmilter.protocol import commands
from purepythonmilter.protocol.exceptions import (
    ProtocolViolationCommandData,
    ProtocolViolationPacket,
    ProtocolViolationPayload,
)
from purepythonmilter.protocol.payload import PayloadDecoder

from filterd.endpoints.milter.connection import Framer, command_of
from filterd.endpoints.milter.session import check_header, macros_of
from tests.tables import cases

CHARS = sorted(commands.chars_to_command_registry)


@pytest.mark.parametrize("char", CHARS, ids=[char.decode("latin-1") for char in CHARS])
def test_every_command_as_purepythonmilter_decodes_it(char: bytes) -> None:
    payload = char + b"data\0more\0"
    want = PayloadDecoder(connection_id=models.MilterServerConnectionID.generate()).decode(payload)
    assert command_of(payload) == want


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (b"B", (commands.BodyChunk, b"")),
        (b"Bbody\r\n", (commands.BodyChunk, b"body\r\n")),
        (b"LFrom\0a@b\0", (commands.Header, b"From\0a@b\0")),
    ],
    ids=["empty-body-chunk", "body-chunk", "header"],
)
def test_command_and_data(payload: bytes, want: tuple[type, bytes]) -> None:
    assert command_of(payload) == want


@pytest.mark.parametrize("payload", [b"\0", b"zdata", b"\xff"], ids=["nul", "z", "ff"])
def test_an_unknown_command_is_a_protocol_violation(payload: bytes) -> None:
    with pytest.raises(ProtocolViolationPayload):
        command_of(payload)


def purepythonmilter_decodes(kind: type[commands.BaseCommandWithData], data: bytes) -> object:
    """What purepythonmilter's command object makes of `data`, or the class it raises."""
    try:
        command = kind(data_raw=data)
    except ProtocolViolationCommandData:
        return ProtocolViolationCommandData
    return dict(command.macros) if isinstance(command, commands.DefineMacro) else None


def filterd_decodes(check: Callable[[bytes], object], data: bytes) -> object:
    try:
        return check(data)
    except ProtocolViolationCommandData:
        return ProtocolViolationCommandData


# SMFIC_MACRO data, decoded without the command object: the same macros, and a violation
# where purepythonmilter sees one. (id, data)
MACROS = [
    ("connect-stage", b"Cj\0host.example\0{daemon_addr}\x00127.0.0.1\0"),
    ("mail-stage-one", b"M{auth_authen}\0alice\0"),
    ("stage-only", b"E"),
    ("empty-value", b"Ei\0\0"),
    ("repeated-name", b"Ci\0one\0i\0two\0"),
    ("utf8-value", "Ev\0Postfix 3.7 \u00e9\0".encode()),
    ("empty", b""),
    ("unknown-stage", b"Zi\0x\0"),
    ("not-nul-terminated", b"Ci\0x"),
    ("odd-strings", b"Ci\0x\0j\0"),
    ("not-utf8", b"Ci\0\xff\0"),
    ("lone-nul", b"C\0"),
]


# SMFIC_HEADER data, checked without the command object: a violation exactly where
# purepythonmilter sees one. (id, data)
HEADERS = [
    ("plain", b"Subject\0 hello\0"),
    ("folded", b"Subject\0 a\n\tb\0"),
    ("empty-value", b"X-Empty\0\0"),
    ("not-ascii", b"Subj\xe9ct\0 \xff\0"),
    ("empty", b""),
    ("lone-nul", b"\0"),
    ("no-value", b"Subject\0"),
    ("not-nul-terminated", b"Subject\0 hello"),
    ("three-strings", b"Subject\0 a\0b\0"),
]


# (filterd's decoder, the purepythonmilter command it stands in for, its table)
DECODERS = [("macro", macros_of, commands.DefineMacro, MACROS),
            ("header", check_header, commands.Header, HEADERS)]  # fmt: skip


@pytest.mark.parametrize(
    ("decode", "command", "data"),
    [pytest.param(decode, command, data, id=f"{kind}-{case}")
     for kind, decode, command, table in DECODERS for case, data in table],
)  # fmt: skip
def test_decodes_as_purepythonmilter(
    decode: Callable[[bytes], object], command: type[commands.BaseCommandWithData], data: bytes
) -> None:
    """SMFIC_MACRO and SMFIC_HEADER without the command object: the same result, or the same
    violation, as purepythonmilter's own decoding."""
    got = filterd_decodes(decode, data)
    want = purepythonmilter_decodes(command, data)
    assert got == want, f"got {got!r}, want {want!r}"


# Packets as Postfix sends them, cut into reads at every size: next_command() gives what
# command_of(next()) gives, packet for packet. (id, packets)
STREAMS = [
    ("macro-connect-body-eom", [b"DCj\0mx\0", b"C[1.2.3.4]\x004\x00\x19127.0.0.1\0",
                                b"B" + b"x" * 300, b"E"]),
    ("empty-body-chunk", [b"B", b"E"]),
    ("full-body-chunk", [b"B" + b"\r\n" * 32767 + b"y"]),
]  # fmt: skip


@pytest.mark.parametrize("payloads", cases(STREAMS))
@pytest.mark.parametrize("read", [1, 3, 4, 5, 64, 70000])
def test_next_command_is_command_of_next(payloads: list[bytes], read: int) -> None:
    stream = b"".join(len(payload).to_bytes(4, "big") + payload for payload in payloads)
    framer, reference = Framer(), Framer()
    got, want = [], []
    for start in range(0, len(stream), read):
        framer.feed(stream[start : start + read])
        reference.feed(stream[start : start + read])
        while (command := framer.next_command()) is not None:
            got.append(command)
        while (payload := reference.next()) is not None:
            want.append(command_of(payload))
    assert got == want
    assert len(got) == len(payloads)


@pytest.mark.parametrize(
    ("stream", "error"),
    [(b"\0\0\0\0", ProtocolViolationPacket), (b"\0\0\0\1z", ProtocolViolationPayload)],
    ids=["zero-length", "unknown-command"],
)
def test_next_command_refuses_what_next_refuses(stream: bytes, error: type[Exception]) -> None:
    framer = Framer()
    framer.feed(stream)
    with pytest.raises(error):
        framer.next_command()
