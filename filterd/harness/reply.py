"""SMTP reply parsing, without I/O.

Replies arrive in pieces of any size; `ReplyParser.feed` keeps the incomplete tail and returns
every reply completed so far. A reply line is "NNN-text" (more lines follow) or "NNN text"
(the last line), RFC 5321 §4.2.1. A line that does not look like that is kept as a reply with
code 0, so that a server's garbage is shown as evidence instead of being lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]
    at: float  # seconds since the connection was opened

    @property
    def reply_class(self) -> int:
        return self.code // 100

    def show(self) -> str:
        """One line: the code and the text of every line."""
        return f"{self.code} " + " | ".join(self.lines)


def _split_line(line: bytes) -> tuple[int, bool, str]:
    """Code, whether this is the last line, and the text of one reply line."""
    text = line.decode("utf-8", errors="backslashreplace")
    head, sep = text[:3], text[3:4]
    if not head.isdigit() or sep not in ("", " ", "-"):
        return 0, True, text
    return int(head), sep != "-", text[4:]


@dataclass
class ReplyParser:
    _buffer: bytes = b""
    _lines: list[str] = field(default_factory=list)

    def feed(self, data: bytes, at: float) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            # RFC 5321 §4.2: lines end in CRLF; a bare LF from a sloppy server is tolerated.
            code, last, text = _split_line(line.removesuffix(b"\r"))
            self._lines.append(text)
            if last:
                replies.append(Reply(code, tuple(self._lines), at))
                self._lines = []
        return replies

    @property
    def pending(self) -> bytes:
        """Bytes received that do not complete a reply yet."""
        return self._buffer
