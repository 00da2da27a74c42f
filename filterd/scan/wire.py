"""clamd's wire format for INSTREAM, PING and VERSION, without any I/O.

Authority: clamd(8), "COMMANDS". A command prefixed with `z` ends with a NUL byte and
clamd ends its reply with a NUL too; INSTREAM must carry such a prefix. The content then
follows as chunks `<length><data>`, the length a 4-byte unsigned integer in network byte
order, and a zero-length chunk ends the stream. Replies to INSTREAM are
`stream: OK`, `stream: <name> FOUND` or `<message> ERROR`.

PING is answered `PONG`, VERSION with one line such as `ClamAV 1.4.6/27000/<date>`.

Guarantee: `parse_instream_reply` answers CLEAN for exactly one input, `stream: OK` plus
the terminator. Anything else, including a reply cut short, is INFECTED or ERROR.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from filterd.scan.result import MAX_TEXT_LENGTH, ScanResult

INSTREAM_COMMAND = b"zINSTREAM\0"
PING_COMMAND = b"zPING\0"
VERSION_COMMAND = b"zVERSION\0"
# clamd(8), "IDSESSION, END": one connection, many commands, each reply `<id>: <reply>`.
IDSESSION_COMMAND = b"zIDSESSION\0"
END_COMMAND = b"zEND\0"
TERMINATOR = b"\0"
CHUNK_SIZE = 64 * 1024
# The length prefix is an unsigned 32-bit integer in network byte order.
_LENGTH = struct.Struct("!I")
END_OF_STREAM = _LENGTH.pack(0)

_CLEAN = "stream: OK"
_FOUND_PREFIX = "stream: "
_FOUND_SUFFIX = " FOUND"
_ERROR_SUFFIX = " ERROR"
_EXCERPT_LENGTH = 40
# Pieces shorter than this are not worth a write of their own.
_SMALL = 4096

# What a gathered write (link.send_buffers) takes: the content's own bytes, or views of them.
Buffer = bytes | memoryview


def instream_frames(content: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the INSTREAM body: length-prefixed chunks, then the zero-length end chunk."""
    if not 0 < chunk_size <= CHUNK_SIZE:
        raise ValueError(f"chunk_size must be 1..{CHUNK_SIZE}, not {chunk_size}")
    yield from _chunks(memoryview(content), chunk_size)
    yield END_OF_STREAM


def _chunks(view: memoryview, chunk_size: int) -> Iterator[bytes]:
    for start in range(0, len(view), chunk_size):
        chunk = view[start : start + chunk_size]
        yield _LENGTH.pack(len(chunk)) + chunk


def frames_of(pieces: list[memoryview]) -> bytes:
    """The INSTREAM chunks carrying `pieces` in order, in one buffer (a stream's next part).

    Chunk boundaries need not follow the pieces: clamd joins the chunks into one stream."""
    return b"".join(_chunks(memoryview(b"".join(pieces)), CHUNK_SIZE))


def frame_views(pieces: Sequence[memoryview]) -> list[Buffer]:
    """The same bytes as `frames_of(pieces)`, as buffers for one gathered write: each chunk's
    length, then views of the pieces that fill it. The content is not copied."""
    total = sum(len(piece) for piece in pieces)
    buffers: list[Buffer] = []
    index = offset = 0
    for start in range(0, total, CHUNK_SIZE):
        need = min(CHUNK_SIZE, total - start)
        buffers.append(_LENGTH.pack(need))
        while need:
            piece = pieces[index]
            take = min(need, len(piece) - offset)
            buffers.append(piece[offset : offset + take])
            need -= take
            offset += take
            if offset == len(piece):
                index, offset = index + 1, 0
    return buffers


def instream_request(content: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the whole INSTREAM request, command first, in pieces ready to send.

    The command and the end chunk are joined to their neighbours, so that a short
    message leaves in a single write.
    """
    pending = INSTREAM_COMMAND
    for frame in instream_frames(content, chunk_size):
        if len(pending) < _SMALL or len(frame) < _SMALL:
            pending += frame
        else:
            yield pending
            pending = frame
    yield pending


def parse_instream_reply(reply: bytes, elapsed: float) -> ScanResult:
    """Turn clamd's whole reply, terminator included, into a result."""
    problem = _reply_problem(reply)
    if problem is not None:
        return ScanResult.error(problem, elapsed)
    text = _reply_text(reply)
    if text == _CLEAN:
        return ScanResult.clean(elapsed)
    # Checked before FOUND: clamd reports a failed scan as "stream: <message> ERROR".
    if text.endswith(_ERROR_SUFFIX):
        return ScanResult.error(_clamd_error(text.removesuffix(_ERROR_SUFFIX)), elapsed)
    name = _found_name(text)
    if name is not None:
        return ScanResult.infected(name, elapsed)
    return ScanResult.error(_unexpected(text), elapsed)


def session_reply(reply: bytes, number: int) -> bytes | None:
    """The reply to request `number` of a zIDSESSION without its `<id>: ` (ids count from 1,
    in ASCII; clamd(8), IDSESSION), or None when it carries another id or none."""
    prefix = b"%d: " % number
    return reply[len(prefix) :] if reply.startswith(prefix) else None


def parse_pong(reply: bytes) -> str | None:
    """None when clamd answered PING with PONG, else why not (a short line)."""
    problem = _reply_problem(reply)
    if problem is None and _reply_text(reply) != "PONG":
        problem = _unexpected(_reply_text(reply))
    return problem


def parse_version(reply: bytes) -> tuple[str | None, str | None]:
    """(version, None) for clamd's answer to VERSION, or (None, why it is not one)."""
    problem = _reply_problem(reply)
    if problem is not None:
        return None, problem
    text = _reply_text(reply)
    if not text.startswith("ClamAV ") or len(text) > MAX_TEXT_LENGTH:
        return None, _unexpected(text)
    return text, None


def _reply_problem(reply: bytes) -> str | None:
    """Why the reply cannot be read at all, or None."""
    if not reply:
        return "empty reply from clamd"
    if not reply.endswith(TERMINATOR):
        # The connection closed mid-reply: what arrived may be a prefix of anything.
        return "incomplete reply from clamd"
    body = reply.removesuffix(TERMINATOR)
    if not (body.isascii() and _reply_text(reply).isprintable()):
        return _unexpected(_reply_text(reply))
    return None


def _reply_text(reply: bytes) -> str:
    return reply.removesuffix(TERMINATOR).decode("ascii", errors="backslashreplace")


def _found_name(text: str) -> str | None:
    if not (text.startswith(_FOUND_PREFIX) and text.endswith(_FOUND_SUFFIX)):
        return None
    name = text.removeprefix(_FOUND_PREFIX).removesuffix(_FOUND_SUFFIX)
    if not name or name != name.strip() or len(name) > MAX_TEXT_LENGTH:
        return None
    return name


def _clamd_error(message: str) -> str:
    message = message.removeprefix(_FOUND_PREFIX).strip()
    return _shorten(f"clamd: {message}" if message else "clamd: ERROR")


def _unexpected(text: str) -> str:
    excerpt = ascii(text[:_EXCERPT_LENGTH])
    return _shorten(f"unexpected reply from clamd: {excerpt}")


def _shorten(text: str) -> str:
    if len(text) <= MAX_TEXT_LENGTH:
        return text
    return text[: MAX_TEXT_LENGTH - 3] + "..."
