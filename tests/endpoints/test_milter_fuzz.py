"""Property test: the Milter endpoint against arbitrary packets mixed with valid sequences.

Each example feeds one connection (a socketpair, through the endpoint's own accept path)
with a Postfix-like conversation in which any step may be an arbitrary packet or raw bytes,
then ends its input. A model of the Sendmail milter protocol predicts, command by command,
whether a reply is due (from the SMFIP_NR_* bits filterd agreed to) and when the connection
must close (QUIT, an unknown command, a broken OPTNEG, anything before OPTNEG). Raw bytes
break the framing, so after them only the general invariants are checked.

Invariants: no exception escapes the connection and no bug is logged; every response is a
well-formed milter response of a kind filterd sends; the replies are exactly those the
protocol calls for; nothing is accepted after a refusal in the same message; the connection
ends (end of input) within a bound.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from filterd.config import Config, MilterSettings
from filterd.endpoints.milter.endpoint import MilterEndpoint
from filterd.endpoints.milter.replies import NO_REPLY_BITS
from filterd.testing import FakeScanner
from tests.endpoints.milter_client import POSTFIX_ACTIONS, POSTFIX_PROTOCOL, packet
from tests.endpoints.test_milter import make_pipeline

COMMANDS = b"ABCDEHKLMNOQRTU"  # Sendmail milter protocol SMFIC_* that purepythonmilter knows
EVENT_OF = {b"C": "connect", b"H": "helo", b"M": "mail", b"R": "rcpt", b"T": "data",
            b"U": "unknown", b"N": "eoh", b"B": "body", b"L": "header"}  # fmt: skip
FINAL = b"cayd"  # + "y": replies that end the answer to one command
MODIFICATIONS = b"hmqp"
REPLY_CODE = re.compile(rb"[45]\d\d [45]\.\d{1,3}\.\d{1,3} [\x20-\x7e]+")

# --- strategies ---------------------------------------------------------------------------

text = st.binary(max_size=40)
optneg = st.one_of(
    st.just((POSTFIX_ACTIONS, POSTFIX_PROTOCOL)),
    st.tuples(st.integers(0, 0x1FF), st.integers(0, 0x1FFFFF)),
).map(lambda offer: packet(b"O", struct.pack("!III", 6, *offer)))
valid = st.one_of(
    st.just(packet(b"C", b"client.test\x004" + struct.pack("!H", 4000) + b"192.0.2.1\0")),
    st.just(packet(b"H", b"helo.test\0")),
    text.map(lambda addr: packet(b"M", b"<" + addr + b">\0")),
    text.map(lambda addr: packet(b"R", b"<" + addr + b">\0")),
    st.tuples(text, text).map(lambda nv: packet(b"L", nv[0] + b"\0" + nv[1] + b"\0")),
    st.binary(max_size=300).map(lambda data: packet(b"B", data)),
    st.sampled_from(
        [
            packet(b"E"),
            packet(b"A"),
            packet(b"N"),
            packet(b"T"),
            packet(b"D", b"Ei\0QID\0"),
            packet(b"Q"),
        ]
    ),
    st.just(
        b"".join(
            [
                packet(b"M", b"<a@x.test>\0"),
                packet(b"R", b"<b@x.test>\0"),
                packet(b"L", b"Subject\0 hi\0"),
                packet(b"B", b"VIRUS-Fuzz\r\n"),
                packet(b"E"),
                packet(b"A"),
            ]
        )
    ),
    optneg,
)
arbitrary_packet = st.tuples(st.binary(min_size=1, max_size=1), st.binary(max_size=80)).map(
    lambda cd: packet(cd[0], cd[1])
)
raw = st.binary(min_size=1, max_size=40).map(lambda data: b"RAW" + data)  # marked, see split
step = st.one_of(valid, valid, arbitrary_packet, raw)
conversation = st.tuples(st.booleans(), optneg, st.lists(step, max_size=20))

# --- the model ----------------------------------------------------------------------------


@dataclass
class Reply:
    code: bytes
    data: bytes


def parse(stream: bytes) -> list[Reply]:
    """Every response in what filterd wrote; fails on anything not well-formed."""
    replies, offset = [], 0
    while offset < len(stream):
        assert len(stream) - offset >= 4, f"truncated length at {offset}"
        (length,) = struct.unpack("!I", stream[offset : offset + 4])
        body = stream[offset + 4 : offset + 4 + length]
        assert 1 <= length == len(body), f"bad length {length}"
        reply = Reply(body[:1], body[1:])
        check_form(reply)
        replies.append(reply)
        offset += 4 + length
    return replies


def check_form(reply: Reply) -> None:
    code, data = reply.code, reply.data
    if code == b"O":
        version, _, _ = struct.unpack("!III", data[:12])
        assert version == 6
    elif code == b"y":
        assert data.endswith(b"\0"), data
        assert REPLY_CODE.fullmatch(data[:-1]), data
    elif code == b"h":
        assert data.endswith(b"\0"), data
        assert data.count(b"\0") == 2, data
    elif code == b"m":
        assert len(data) > 4, data
        assert data[4:].endswith(b"\0"), data
        assert data[4:].count(b"\0") == 2, data
    elif code == b"q":
        assert data.endswith(b"\0"), data
    else:
        assert code in (b"c", b"a", b"d", b"p"), reply
        assert data == b"", reply


@dataclass
class Model:
    """What the protocol says must come back, command by command."""

    replies: list[Reply]  # to read the protocol bits each OPTNEG reply agreed
    optnegs: int = 0  # answered so far
    closed: bool = False
    sequence: list[tuple[bytes, bool]] = field(default_factory=list)  # command, answered

    def send(self, command: bytes, data: bytes) -> None:
        if self.closed:
            return
        if command not in COMMANDS or command == b"Q":
            self.closed = True
        elif command == b"O":
            if len(data) == 12 and data[:4] == struct.pack("!I", 6):
                self.optnegs += 1
                self.sequence.append((command, True))
            else:
                self.closed = True
        elif not self.optnegs:
            self.closed = True  # Sendmail milter protocol: OPTNEG comes first
        else:
            answered = command == b"E" or (
                command in EVENT_OF and self._replies_to(EVENT_OF[command])
            )
            self.sequence.append((command, answered))

    def _replies_to(self, event: str) -> bool:
        agreed = [reply for reply in self.replies if reply.code == b"O"]
        (_, _, protocol) = struct.unpack("!III", agreed[self.optnegs - 1].data[:12])
        return not protocol & NO_REPLY_BITS[event]


def split(stream: bytes) -> list[tuple[bytes, bytes] | None]:
    """The packets of one step; None for raw bytes (framing unknown from then on)."""
    if stream.startswith(b"RAW"):
        return [None]
    items: list[tuple[bytes, bytes] | None] = []
    offset = 0
    while offset < len(stream):
        (length,) = struct.unpack("!I", stream[offset : offset + 4])
        body = stream[offset + 4 : offset + 4 + length]
        items.append((body[:1], body[1:]))
        offset += 4 + length
    return items


def answers(replies: list[Reply]) -> list[list[Reply]]:
    """Replies grouped per command: modifications and progress, then one final reply."""
    groups: list[list[Reply]] = []
    current: list[Reply] = []
    for reply in replies:
        current.append(reply)
        if reply.code not in MODIFICATIONS:
            groups.append(current)
            current = []
    assert not current, f"modifications without a final reply: {current}"
    return groups


# --- the test -----------------------------------------------------------------------------


async def converse(chunks: list[bytes]) -> tuple[bytes, BaseException | None, list[dict[str, Any]]]:
    config = Config(milter=MilterSettings(listen="inet:127.0.0.1:0"))
    endpoint = MilterEndpoint(config, make_pipeline(FakeScanner()))
    ours, theirs = socket.socketpair()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(sock=ours)
        endpoint._accept(reader, writer)  # the accept path, no listener
        (task,) = endpoint.connections
        client_reader, client_writer = await asyncio.open_connection(sock=theirs)
        client_writer.write(b"".join(chunks))
        client_writer.write_eof()
        async with asyncio.timeout(10):  # the connection must end: bounded
            output = await client_reader.read()
            await asyncio.wait({task})
        client_writer.close()
        await endpoint.close()
    error = None if task.cancelled() else task.exception()
    return output, error, [dict(entry) for entry in logs]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversation)
def test_arbitrary_packets_never_break_the_endpoint(
    case: tuple[bool, bytes, list[bytes]],
) -> None:
    negotiate, first, steps = case
    chunks = ([first] if negotiate else []) + [s.removeprefix(b"RAW") for s in steps]
    output, error, logs = asyncio.run(converse(chunks))
    assert error is None, f"exception escaped: {error!r}"
    bugs = [x for x in logs if x.get("where") or x["log_level"] in ("critical", "exception")]
    assert not bugs, bugs
    replies = parse(output)
    groups = answers(replies)
    check_against_model([first] * negotiate + steps, replies, groups)


def check_against_model(
    steps: list[bytes], replies: list[Reply], groups: list[list[Reply]]
) -> None:
    model = Model(replies)
    for stream in steps:
        for item in split(stream):
            if item is None:  # raw bytes: what follows cannot be predicted
                return
            model.send(*item)
    answered = [command for command, due in model.sequence if due]
    assert len(groups) == len(answered), (answered, groups)
    for command, group in zip(answered, groups, strict=True):
        codes = [reply.code for reply in group]
        if command == b"O":
            assert codes == [b"O"]
        elif command == b"E":
            assert codes[-1] in (b"c", b"y", b"d"), group
        else:
            assert codes in ([b"c"], [b"y"], [b"a"]), (command, group)
    check_no_accept_after_refusal(model.sequence, groups)


def check_no_accept_after_refusal(
    sequence: list[tuple[bytes, bool]], groups: list[list[Reply]]
) -> None:
    """Within one message (MAIL to end of message or ABORT), after a 'y' the end of message
    is refused too, with no header change before it."""
    remaining = iter(groups)
    refused = False
    for command, due in sequence:
        group = next(remaining) if due else []
        if command in (b"M", b"A", b"K"):
            refused = False
        if command == b"E":
            if refused:
                assert [reply.code for reply in group] == [b"y"], group
            refused = False
        elif any(reply.code == b"y" for reply in group):
            refused = True
