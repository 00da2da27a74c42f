"""The content inspector: finds what SMTP smuggling needs and normalises the rest.

Guarantees, for any bytes fed in any chunks:
- the findings, the normalised content and the trailing bytes do not depend on the chunking;
- only `<CRLF>.<CRLF>` ends the data (RFC 5321 §4.1.1.4; the first CRLF may be that of the
  DATA command line). Every other "." line, framed by a bare CR, a bare LF, or padded with NUL,
  space or tab, is a fake end of data and is reported, whatever the mode;
- in normalize, note and reject modes the content holds no bare CR and no bare LF: a bare LF
  ends a line as CRLF does and a stray CR becomes a space, as Postfix's smtpd and
  `cleanup_replace_stray_cr_lf` do;
- memory for findings is bounded (see findings.py); memory for content is bounded by the
  policy's size limit;
- only `CoreError` is raised.

Lines are split on CRLF only, the one line end RFC 5321 §2.3.8 allows. A block of complete
lines with no bare CR, no bare LF, no NUL and correct dot-stuffing is checked and unstuffed
with whole-block `bytes` operations; only other blocks are walked line by line.
"""

from __future__ import annotations

import re
from enum import StrEnum

from filterd.core.errors import InspectorError
from filterd.core.findings import Findings, Kind
from filterd.core.policy import BareNewline

CRLF = b"\r\n"
# A line that is a single "." padded with NUL, space or tab: what a lenient reader may take for
# the end of data. smuggling.md §3.1 (E09, E10, E22 and the framing variants).
_DOT_LINE = re.compile(rb"[\x00 \t]*\.[\x00 \t]*")
# The commands of a smuggled transaction, in any case (SEC Consult sends them in lower case).
_COMMAND = re.compile(rb"[\x00 \t]*(?:mail[ \t]+from|rcpt[ \t]+to|data|bdat)\b", re.IGNORECASE)
_SPECIAL = re.compile(rb"[\r\n\x00]")
_BARE = re.compile(rb"([\r\n])")


class Framing(StrEnum):
    SMTP_DATA = "smtp_data"  # the DATA stream: dot-stuffed, ended by <CRLF>.<CRLF>
    MESSAGE = "message"  # the message itself (milter, a file): not stuffed, ended by finish()


def dot_stuff(content: bytes) -> bytes:
    """Content ready to send after DATA: every line starting with "." gets another "." in
    front (RFC 5321 §4.5.2) and the last line ends in CRLF, so `.\\r\\n` can follow."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed[:1] == b".":
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(CRLF):
        stuffed += CRLF
    return stuffed


class ContentInspector:
    """Feed raw bytes with `feed()`; read `findings`, `content()` and `trailing` once `done`."""

    def __init__(
        self,
        mode: BareNewline = BareNewline.NORMALIZE,
        framing: Framing = Framing.SMTP_DATA,
        max_size: int = 10_240_000,
    ) -> None:
        self.mode = mode
        self.framing = framing
        self.max_size = max_size
        self.findings = Findings()
        self._pending = bytearray()  # unprocessed bytes; always starts at a line start
        self._pending_offset = 0  # stream offset of _pending[0]
        self._out: list[bytes] = []
        self._size = 0
        self._trailing = bytearray()
        self._seen_fake = False
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    @property
    def too_large(self) -> bool:
        return Kind.TOO_LARGE in self.findings

    @property
    def size(self) -> int:
        """Bytes of normalised content so far (counted even past the size limit)."""
        return self._size

    @property
    def trailing(self) -> bytes:
        """Bytes received after the end of data: the next commands (SMTP_DATA framing)."""
        return bytes(self._trailing)

    def content(self) -> bytes:
        """The normalised, unstuffed content; empty if it went over the size limit."""
        if not self._done:
            raise InspectorError("content() before the end of data")
        if self.too_large:
            return b""
        return b"".join(self._out)

    def feed(self, data: bytes) -> None:
        if self._done:
            if self.framing is Framing.MESSAGE:
                raise InspectorError("feed() after finish()")
            self._trailing += data
            return
        search_from = max(len(self._pending) - 1, 0)  # a CR at the end may meet an LF now
        self._pending += data
        end = self._pending.rfind(CRLF, search_from)
        if end < 0:
            self._limit_pending()
            return
        block = bytes(self._pending[: end + 2])
        del self._pending[: end + 2]
        offset = self._pending_offset
        self._pending_offset += len(block)
        self._block(block, offset)

    def finish(self) -> None:
        """End of the input. In MESSAGE framing the last line may lack its CRLF."""
        if self.framing is Framing.SMTP_DATA:
            if not self._done:
                raise InspectorError("input ended before <CRLF>.<CRLF>")
            return
        if self._done:
            return
        if self._pending:
            self._line(bytes(self._pending), self._pending_offset, line_end=b"")
            self._pending.clear()
        self._done = True

    # -- blocks of complete lines -------------------------------------------------------------

    def _limit_pending(self) -> None:
        # One line longer than the whole size limit: the message is too large whatever follows,
        # so keep only the last byte (it may be the CR of the next CRLF).
        excess = len(self._pending) - 1
        if excess > self.max_size:
            self._count_output(excess)
            del self._pending[:excess]
            self._pending_offset += excess

    def _block(self, block: bytes, offset: int) -> None:
        if self.framing is Framing.SMTP_DATA:
            end = _terminator(block)
            if end >= 0:
                self._lines(block[:end], offset)
                self._done = True
                self._trailing += block[end + 3 :] + self._pending
                self._pending.clear()
                return
        self._lines(block, offset)

    def _lines(self, block: bytes, offset: int) -> None:
        if not self._seen_fake and self._is_clean(block):
            self._emit(self._unstuff_clean(block))
            return
        pos = 0
        while pos < len(block):
            end = block.index(CRLF, pos)
            self._line(block[pos:end], offset + pos, line_end=CRLF)
            pos = end + 2

    def _is_clean(self, block: bytes) -> bool:
        line_feeds = block.count(b"\n")
        if block.count(b"\r") != line_feeds or block.count(CRLF) != line_feeds:
            return False  # a bare CR or a bare LF somewhere
        if b"\x00" in block:
            return False
        if self.framing is Framing.MESSAGE:
            return True
        dotted = block.count(b"\r\n.") + (block[:1] == b".")
        stuffed = block.count(b"\r\n..") + (block[:2] == b"..")
        return dotted == stuffed  # RFC 5321 §4.5.2: every line starting with "." is stuffed

    def _unstuff_clean(self, block: bytes) -> bytes:
        if self.framing is Framing.MESSAGE:
            return block
        if b"\r\n.." in block:
            block = block.replace(b"\r\n..", b"\r\n.")
        if block[:2] == b"..":
            block = block[1:]
        return block

    # -- one line, the slow path --------------------------------------------------------------

    def _line(self, line: bytes, offset: int, line_end: bytes) -> None:
        if not _SPECIAL.search(line):
            self._emit(self._segment(line, offset, CRLF, CRLF) + line_end)
            return
        nul = line.find(b"\x00")
        if nul >= 0:
            self.findings.add(Kind.NUL, offset + nul, line.count(b"\x00"))
        parts = _BARE.split(line)
        pieces: list[bytes] = []
        left = CRLF
        pos = offset
        for index in range(0, len(parts), 2):
            segment = parts[index]
            right = parts[index + 1] if index + 1 < len(parts) else CRLF
            pieces.append(self._segment(segment, pos, left, right))
            pos += len(segment)
            if index + 1 < len(parts):
                pieces.append(self._bare(right, pos))
                pos += 1
            left = right
        pieces.append(line_end)
        self._emit(b"".join(pieces))

    def _bare(self, char: bytes, offset: int) -> bytes:
        """A bare CR or LF inside a CRLF line: report it and normalise it."""
        if char == b"\n":
            self.findings.add(Kind.BARE_LF, offset)
            # Postfix: smtpd_forbid_bare_newline=normalize, a bare LF ends the line.
            return b"\n" if self.mode is BareNewline.NO else CRLF
        self.findings.add(Kind.BARE_CR, offset)
        # Postfix: cleanup_replace_stray_cr_lf, a stray CR becomes a space.
        return b"\r" if self.mode is BareNewline.NO else b" "

    def _segment(self, segment: bytes, offset: int, left: bytes, right: bytes) -> bytes:
        """Check a piece of a line between two line breaks of any kind; return its output."""
        if _DOT_LINE.fullmatch(segment) and self._is_fake_end(segment, left, right):
            self.findings.add(Kind.FAKE_END_OF_DATA, offset)
            self._seen_fake = True
        elif self._seen_fake and _COMMAND.match(segment):
            self.findings.add(Kind.SMUGGLED_COMMAND, offset)
        starts_line = left == CRLF or (left == b"\n" and self.mode is not BareNewline.NO)
        if self.framing is Framing.SMTP_DATA and starts_line and segment[:1] == b".":
            if segment[:2] != b".." and not _DOT_LINE.fullmatch(segment):
                self.findings.add(Kind.UNSTUFFED_DOT, offset)
            return segment[1:]  # RFC 5321 §4.5.2: the receiver deletes the first "."
        return segment

    def _is_fake_end(self, segment: bytes, left: bytes, right: bytes) -> bool:
        if self.framing is Framing.SMTP_DATA:
            # The real terminator never gets here: every other "." line is fake.
            return True
        # In a message, "." framed by CRLF is ordinary content (it was ".." on the wire).
        return not (left == CRLF and right == CRLF)

    def _emit(self, data: bytes) -> None:
        if not self.too_large:
            self._out.append(data)
        self._count_output(len(data))

    def _count_output(self, size: int) -> None:
        self._size += size
        if self._size > self.max_size and not self.too_large:
            # The offset of a too_large finding is the limit itself: where the content crossed it.
            self.findings.add(Kind.TOO_LARGE, self.max_size)
            self._out.clear()


def _terminator(block: bytes) -> int:
    """Index of the "." of the first <CRLF>.<CRLF> in a block of whole lines, or -1."""
    if block[:3] == b".\r\n":
        return 0
    found = block.find(b"\r\n.\r\n")
    return found + 2 if found >= 0 else -1
