"""The content inspector: finds what SMTP smuggling needs and normalises the rest.

Guarantees, for any bytes fed in any chunks:
- the findings, the normalised content and the trailing bytes do not depend on the chunking
  (past the size limit only the verdict, too large, and the end of data are kept: the
  inspector then looks for nothing but the real terminator);
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
_END_OF_DATA = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4
# The slow path matches against the block with a CRLF in front (the block starts a line), so
# that every segment starts after a CR or an LF and each pattern begins with a byte to scan
# for. Group 1 is what a finding points at.
#
# A segment that is a single ".", after NULs and before NULs, spaces or tabs: what a lenient
# reader may take for the end of data. smuggling.md §3.1 (E09, E10, E22 and every framing
# variant). A space before the dot is indentation, ordinary content, not a terminator.
_DOT_SEGMENT = re.compile(rb"[\r\n](\x00*\.[\x00 \t]*)(?=[\r\n]|\Z)")
# The commands of a smuggled transaction, in any case (SEC Consult sends them in lower case).
_COMMAND_SEGMENT = re.compile(
    rb"[\r\n]([\x00 \t]*(?:mail[ \t]+from|rcpt[ \t]+to|data|bdat)\b)", re.IGNORECASE
)
# The first "." of a line; with "no", only CRLF ends a line.
_DOT_AFTER_LF = re.compile(rb"\n(\.)")
_DOT_AFTER_CRLF = re.compile(rb"\r\n(\.)")
# ...when the client did not stuff it: not "..", and not a "." segment (a fake end of data).
_NOT_STUFFED = rb"(?!\.)(?![\x00 \t]*(?:[\r\n]|\Z))"
_UNSTUFFED_AFTER_LF = re.compile(_DOT_AFTER_LF.pattern + _NOT_STUFFED)
_UNSTUFFED_AFTER_CRLF = re.compile(_DOT_AFTER_CRLF.pattern + _NOT_STUFFED)
_CR_WITHOUT_LF = re.compile(rb"\r(?!\n)")
_LF_WITHOUT_CR = re.compile(rb"(?<!\r)\n")


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
        self._out = bytearray()  # one buffer: a list of small pieces costs 20 times the bytes
        self._mid_line = False  # _pending was cut inside an over-long line
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
        return bytes(self._out)

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
            self._slow(bytes(self._pending), self._pending_offset)
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
            self._mid_line = True

    def _block(self, block: bytes, offset: int) -> None:
        if self.too_large:
            self._skip(block)
            return
        # A block that passes the fast check holds no terminator: the "." line is not stuffed.
        # Only a block ending in the terminator (the usual last one) is searched first.
        if not block.endswith(_END_OF_DATA):
            fast = self._fast(block)
            if fast is not None:
                self._emit(fast)
                return
        end = _terminator(block) if self.framing is Framing.SMTP_DATA else -1
        if end < 0:
            self._lines(block, offset)
            return
        self._lines(block[:end], offset)
        self._end(block, end)

    def _skip(self, block: bytes) -> None:
        """Past the size limit only the real end of data matters (delayed reject): no findings,
        no content. After a cut, the block starts inside a line, where "." is no terminator."""
        end = _terminator(block, at_line_start=not self._mid_line)
        self._mid_line = False
        self._count_output(len(block) if end < 0 else end)
        if end >= 0:
            self._end(block, end)

    def _end(self, block: bytes, end: int) -> None:
        self._done = True
        self._trailing += block[end + 3 :] + self._pending
        self._pending.clear()

    def _lines(self, block: bytes, offset: int) -> None:
        fast = self._fast(block)
        if fast is not None:
            self._emit(fast)
        else:
            self._slow(block, offset)

    def _fast(self, block: bytes) -> bytes | None:
        """The output for a block of whole lines that needs no line-by-line look, or None.

        Such a block has no bare CR, no bare LF, no NUL, and (SMTP_DATA) every line that starts
        with "." is stuffed.
        """
        if self._seen_fake:
            return None  # every later line is checked for smuggled commands
        # No CR without an LF after it; then equal counts mean no LF without a CR before it.
        if _CR_WITHOUT_LF.search(block) or block.count(b"\r") != block.count(b"\n"):
            return None
        if b"\x00" in block:
            return None
        if self.framing is Framing.MESSAGE:
            return block
        dotted = block.count(b"\r\n.") + (block[:1] == b".")
        if not dotted:
            return block
        unstuffed = block.replace(b"\r\n..", b"\r\n.")
        if unstuffed[:2] == b"..":
            unstuffed = unstuffed[1:]
        # RFC 5321 §4.5.2: each stuffed line lost one byte; every dotted line must have been.
        return unstuffed if len(block) - len(unstuffed) == dotted else None

    # -- one line, the slow path --------------------------------------------------------------

    def _slow(self, block: bytes, offset: int) -> None:
        """Check and normalise any bytes: whole lines, or the unfinished last line of a message.

        Inside a CRLF line every CR and every LF is bare; they cut the line into "segments",
        which a lenient reader would take for lines. Each rule is one regular expression over
        the whole block, so dense runs of CR, LF and "." cost a few passes, not a Python step
        per line.
        """
        self._count_bare(block, offset)
        framed, framed_offset = CRLF + block, offset - len(CRLF)
        self._find_fake_ends(framed, framed_offset)
        if self.framing is Framing.SMTP_DATA and b"." in block:
            block = self._unstuff(framed, framed_offset)[len(CRLF) :]
        self._emit(self._normalise(block))

    def _count_bare(self, block: bytes, offset: int) -> None:
        nul = block.find(b"\x00")
        if nul >= 0:
            self.findings.add(Kind.NUL, offset + nul, block.count(b"\x00"))
        line_ends = block.count(CRLF)
        bare_cr = _CR_WITHOUT_LF.search(block)
        if bare_cr:
            self.findings.add(
                Kind.BARE_CR, offset + bare_cr.start(), block.count(b"\r") - line_ends
            )
        bare_lf = _LF_WITHOUT_CR.search(block)
        if bare_lf:
            self.findings.add(
                Kind.BARE_LF, offset + bare_lf.start(), block.count(b"\n") - line_ends
            )

    def _find_fake_ends(self, block: bytes, offset: int) -> None:
        """Report fake end-of-data segments, and the commands after the first one."""
        commands_from = 0 if self._seen_fake else -1
        if self.framing is Framing.SMTP_DATA:
            # The real terminator never gets here: every "." segment is a fake one.
            first = self._add_matches(Kind.FAKE_END_OF_DATA, _DOT_SEGMENT, block, offset)
        else:
            first = self._add_message_fakes(block, offset)
        if first >= 0 and not self._seen_fake:
            self._seen_fake = True
            commands_from = first
        if commands_from >= 0:
            self._add_matches(Kind.SMUGGLED_COMMAND, _COMMAND_SEGMENT, block, offset, commands_from)

    def _add_message_fakes(self, block: bytes, offset: int) -> int:
        """Fake end-of-data segments in a message, where "." framed by CRLF is content (it was
        ".." on the wire). Returns the end of the first one, or -1."""
        first = -1
        for match in _DOT_SEGMENT.finditer(block):
            if not _framed_by_crlf(block, match):
                self.findings.add(Kind.FAKE_END_OF_DATA, offset + match.start(1))
                first = match.end() if first < 0 else first
        return first

    def _add_matches(
        self, kind: Kind, pattern: re.Pattern[bytes], block: bytes, offset: int, start: int = 0
    ) -> int:
        """Count the matches of `pattern` as findings of `kind`; return where the first ends."""
        first = pattern.search(block, start)
        if first is None:
            return -1
        self.findings.add(kind, offset + first.start(1), len(pattern.findall(block, start)))
        return first.end()

    def _unstuff(self, block: bytes, offset: int) -> bytes:
        """RFC 5321 §4.5.2: delete the first "." of every line. Unless the mode is "no", a bare
        LF starts a line too, as it does for Postfix's smtpd."""
        if self.mode is BareNewline.NO:
            line_dot, unstuffed = _DOT_AFTER_CRLF, _UNSTUFFED_AFTER_CRLF
        else:
            line_dot, unstuffed = _DOT_AFTER_LF, _UNSTUFFED_AFTER_LF
        self._add_matches(Kind.UNSTUFFED_DOT, unstuffed, block, offset)
        return line_dot.sub(_without_the_dot, block)

    def _normalise(self, data: bytes) -> bytes:
        """The bare CRs and LFs of whole lines, as the mode wants them."""
        if self.mode is BareNewline.NO or not (b"\r" in data or b"\n" in data):
            return data
        # Postfix: cleanup_replace_stray_cr_lf, a stray CR becomes a space;
        # smtpd_forbid_bare_newline=normalize, a bare LF ends the line as CRLF does.
        return data.replace(CRLF, b"\n").replace(b"\r", b" ").replace(b"\n", CRLF)

    def _emit(self, data: bytes) -> None:
        if not self.too_large:
            self._out += data
        self._count_output(len(data))

    def _count_output(self, size: int) -> None:
        self._size += size
        if self._size > self.max_size and not self.too_large:
            # The offset of a too_large finding is the limit itself: where the content crossed it.
            self.findings.add(Kind.TOO_LARGE, self.max_size)
            self._out = bytearray()


def _framed_by_crlf(framed: bytes, match: re.Match[bytes]) -> bool:
    """Is this segment a whole line: CRLF before it, CRLF (or the end) after it?"""
    start, end = match.start(1), match.end(1)
    after = end == len(framed) or framed[end : end + 2] == CRLF
    return framed[start - 2 : start] == CRLF and after


def _without_the_dot(match: re.Match[bytes]) -> bytes:
    return match[0][:-1]


def _terminator(block: bytes, at_line_start: bool = True) -> int:
    """Index of the "." of the first <CRLF>.<CRLF> in a block ending in CRLF, or -1."""
    if at_line_start and block[:3] == b".\r\n":
        return 0
    found = block.find(_END_OF_DATA)
    return found + 2 if found >= 0 else -1
