"""A payload's command class and data: the same as purepythonmilter's PayloadDecoder gives."""

from __future__ import annotations

import pytest
from purepythonmilter.api import models
from purepythonmilter.protocol import commands
from purepythonmilter.protocol.exceptions import ProtocolViolationPayload
from purepythonmilter.protocol.payload import PayloadDecoder

from filterd.endpoints.milter.connection import command_of

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
