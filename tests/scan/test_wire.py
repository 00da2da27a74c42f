"""clamd's wire format: INSTREAM framing and the reply table (clamd(8), COMMANDS)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from filterd.scan.result import ScanResult, ScanStatus
from filterd.scan.wire import (
    CHUNK_SIZE,
    END_OF_STREAM,
    INSTREAM_COMMAND,
    frames_of,
    instream_frames,
    instream_request,
    parse_instream_reply,
    parse_pong,
    parse_version,
)


def unframe(frames: list[bytes]) -> tuple[list[int], bytes]:
    lengths = []
    data = b""
    for frame in frames:
        (length,) = struct.unpack("!I", frame[:4])
        assert len(frame) == 4 + length
        lengths.append(length)
        data += frame[4:]
    return lengths, data


@pytest.mark.parametrize(
    ("size", "want_lengths"),
    [
        pytest.param(0, [0], id="empty-content-is-just-the-end-chunk"),
        pytest.param(1, [1, 0], id="one-byte"),
        pytest.param(CHUNK_SIZE, [CHUNK_SIZE, 0], id="exactly-one-chunk"),
        pytest.param(CHUNK_SIZE + 1, [CHUNK_SIZE, 1, 0], id="one-byte-over-a-chunk"),
        pytest.param(3 * CHUNK_SIZE + 7, [CHUNK_SIZE] * 3 + [7, 0], id="several-chunks"),
    ],
)
def test_instream_frames(size: int, want_lengths: list[int]) -> None:
    content = bytes(i % 251 for i in range(size))
    frames = list(instream_frames(content))
    got_lengths, got_data = unframe(frames)
    assert got_lengths == want_lengths
    assert got_data == content
    assert frames[-1] == END_OF_STREAM == b"\0\0\0\0"


def test_instream_frames_length_is_big_endian() -> None:
    (frame, _) = instream_frames(b"x" * 258)
    assert frame[:4] == b"\x00\x00\x01\x02"


@pytest.mark.parametrize("chunk_size", [0, -1, CHUNK_SIZE + 1])
def test_instream_frames_rejects_bad_chunk_size(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        list(instream_frames(b"x", chunk_size))


@dataclass(frozen=True)
class ReplyCase:
    id: str
    reply: bytes
    want: ScanResult


CLEAN = ScanResult.clean()
REPLY_CASES = [
    ReplyCase("ok", b"stream: OK\0", CLEAN),
    ReplyCase("found", b"stream: Fake.Test.Virus FOUND\0", ScanResult.infected("Fake.Test.Virus")),
    ReplyCase(
        "found-unofficial",
        b"stream: Fake.Sig.UNOFFICIAL FOUND\0",
        ScanResult.infected("Fake.Sig.UNOFFICIAL"),
    ),
    ReplyCase(
        "size-limit",
        b"INSTREAM size limit exceeded. ERROR\0",
        ScanResult.error("clamd: INSTREAM size limit exceeded."),
    ),
    ReplyCase(
        "stream-error",
        b"stream: Can't allocate memory ERROR\0",
        ScanResult.error("clamd: Can't allocate memory"),
    ),
    ReplyCase("bare-error", b"ERROR\0", ScanResult.error("unexpected reply from clamd: 'ERROR'")),
    ReplyCase("empty", b"", ScanResult.error("empty reply from clamd")),
    ReplyCase("only-terminator", b"\0", ScanResult.error("unexpected reply from clamd: ''")),
    ReplyCase("ok-cut-short", b"stream: OK", ScanResult.error("incomplete reply from clamd")),
    ReplyCase("found-cut-short", b"stream: X FOU", ScanResult.error("incomplete reply from clamd")),
    ReplyCase(
        "ok-newline-terminated",
        b"stream: OK\n",
        ScanResult.error("incomplete reply from clamd"),
    ),
    ReplyCase(
        "ok-with-newline",
        b"stream: OK\n\0",
        ScanResult.error("unexpected reply from clamd: 'stream: OK\\n'"),
    ),
    ReplyCase(
        "ok-lowercase",
        b"stream: ok\0",
        ScanResult.error("unexpected reply from clamd: 'stream: ok'"),
    ),
    ReplyCase(
        "ok-trailing-space",
        b"stream: OK \0",
        ScanResult.error("unexpected reply from clamd: 'stream: OK '"),
    ),
    ReplyCase(
        "ok-from-idsession",
        b"1: stream: OK\0",
        ScanResult.error("unexpected reply from clamd: '1: stream: OK'"),
    ),
    ReplyCase(
        "found-without-name",
        b"stream:  FOUND\0",
        ScanResult.error("unexpected reply from clamd: 'stream:  FOUND'"),
    ),
    ReplyCase(
        "two-replies",
        b"stream: OK\0stream: OK\0",
        ScanResult.error("unexpected reply from clamd: 'stream: OK\\x00stream: OK'"),
    ),
    ReplyCase(
        "not-ascii",
        b"stream: \xff FOUND\0",
        ScanResult.error("unexpected reply from clamd: 'stream: \\\\xff FOUND'"),
    ),
    ReplyCase(
        "http-server",
        b"HTTP/1.1 400 Bad Request\r\n\r\n\0",
        ScanResult.error("unexpected reply from clamd: 'HTTP/1.1 400 Bad Request\\r\\n\\r\\n'"),
    ),
    ReplyCase(
        "long-garbage-is-cut",
        b"x" * 500 + b"\0",
        ScanResult.error("unexpected reply from clamd: '" + "x" * 40 + "'"),
    ),
    ReplyCase("pong", b"PONG\0", ScanResult.error("unexpected reply from clamd: 'PONG'")),
]


@pytest.mark.parametrize("case", REPLY_CASES, ids=[case.id for case in REPLY_CASES])
def test_parse_instream_reply(case: ReplyCase) -> None:
    got = parse_instream_reply(case.reply, 0.0)
    assert got == case.want, f"got {got}, want {case.want}"


@pytest.mark.parametrize("case", REPLY_CASES, ids=[case.id for case in REPLY_CASES])
def test_only_ok_is_clean(case: ReplyCase) -> None:
    got = parse_instream_reply(case.reply, 0.0)
    assert (got.status is ScanStatus.CLEAN) == (case.reply == b"stream: OK\0")


def test_parse_instream_reply_keeps_elapsed() -> None:
    assert parse_instream_reply(b"stream: OK\0", 1.5).elapsed == 1.5


@pytest.mark.parametrize(
    ("size", "want_pieces"),
    [
        pytest.param(0, 1, id="empty-in-one-write"),
        pytest.param(100, 1, id="short-message-in-one-write"),
        pytest.param(CHUNK_SIZE, 1, id="one-chunk-in-one-write"),
        pytest.param(2 * CHUNK_SIZE + 5, 2, id="tail-joins-last-chunk"),
        pytest.param(3 * CHUNK_SIZE, 3, id="end-chunk-joins-last-chunk"),
    ],
)
def test_instream_request(size: int, want_pieces: int) -> None:
    content = bytes(size)
    pieces = list(instream_request(content))
    assert len(pieces) == want_pieces
    assert b"".join(pieces) == INSTREAM_COMMAND + b"".join(instream_frames(content))
    assert all(len(piece) <= 2 * CHUNK_SIZE + 64 for piece in pieces)


@pytest.mark.parametrize(
    ("sizes", "want_lengths"),
    [
        pytest.param([], [], id="nothing"),
        pytest.param([3, 4], [7], id="joined"),
        pytest.param([CHUNK_SIZE, 1], [CHUNK_SIZE, 1], id="split-at-chunk"),
        pytest.param([CHUNK_SIZE + 1, CHUNK_SIZE], [CHUNK_SIZE, CHUNK_SIZE, 1], id="across"),
    ],
)
def test_frames_of(sizes: list[int], want_lengths: list[int]) -> None:
    pieces = [bytes([i]) * size for i, size in enumerate(sizes)]
    got = frames_of([memoryview(piece) for piece in pieces])
    lengths, data, rest = [], b"", got
    while rest:
        (length,) = struct.unpack("!I", rest[:4])
        lengths.append(length)
        data, rest = data + rest[4 : 4 + length], rest[4 + length :]
    assert (lengths, data) == (want_lengths, b"".join(pieces))


@pytest.mark.parametrize(
    ("reply", "want"),
    [
        pytest.param(b"PONG\0", None, id="pong"),
        pytest.param(b"PONG", "incomplete reply from clamd", id="cut-short"),
        pytest.param(b"", "empty reply from clamd", id="nothing"),
        pytest.param(b"PANG\0", "unexpected reply from clamd: 'PANG'", id="other"),
    ],
)
def test_parse_pong(reply: bytes, want: str | None) -> None:
    assert parse_pong(reply) == want


@pytest.mark.parametrize(
    ("reply", "want"),
    [
        pytest.param(
            b"ClamAV 1.4.6/27000/Mon Dec  1 09:00:00 2026\0",
            ("ClamAV 1.4.6/27000/Mon Dec  1 09:00:00 2026", None),
            id="version",
        ),
        pytest.param(b"ClamAV 1.4.6", (None, "incomplete reply from clamd"), id="cut-short"),
        pytest.param(b"PONG\0", (None, "unexpected reply from clamd: 'PONG'"), id="other"),
    ],
)
def test_parse_version(reply: bytes, want: tuple[str | None, str | None]) -> None:
    assert parse_version(reply) == want
