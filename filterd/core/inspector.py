"""The content inspector: finds what SMTP smuggling needs and normalises the rest.

Guarantees, for any bytes fed in any chunks:
- the verdict-relevant outcome does not depend on the chunking: whether and where the data
  ended, the trailing bytes, the size, and the findings up to the first one that refuses the
  message. Until such a finding the findings and the normalised content are the same however
  the bytes came; once the message is refused whatever follows (too large; a fake end of data
  in every mode but "no"), the inspector looks for nothing but the real end of data and counts
  the size, so later findings are not collected and the content is dropped. In "reject" mode a
  bare CR or LF drops the content, but the inspection goes on: a later fake end of data (or a
  bare LF after a bare CR) gives another verdict;
- only `<CRLF>.<CRLF>` ends the data (RFC 5321 §4.1.1.4; the first CRLF may be that of the
  DATA command line). Every other "." line, framed by a bare CR, a bare LF, or padded with NUL,
  space or tab, is a fake end of data and is reported, whatever the mode; so is a "." followed
  by more than `run_limit` NUL, space or tab bytes, or a line start followed by more than
  `run_limit` NULs (no server takes such a line as text, and a lenient one may drop the run);
- in normalize, note and reject modes the content holds no bare CR and no bare LF: a bare LF
  ends a line as CRLF does and a stray CR becomes a space, as Postfix's smtpd and
  `cleanup_replace_stray_cr_lf` do;
- bounded work and memory: every `feed(data)` costs O(len(data)) plus a constant, whatever the
  content's shape: no byte goes into two blocks, and the cut logic looks again only at the
  bytes it holds back, at most 2 * `run_limit` + 12 between feeds; a block is at most `piece`
  bytes (when `piece` exceeds that bound, as the defaults do); memory for findings is bounded
  (see findings.py), memory for content by the size limit and the budget (budget.py);
- only `CoreError` is raised.

How the bytes are cut. Unprocessed bytes wait in `_pending`; each feed processes them up to the
last point where the cut cannot change a regular expression's answer: after a CRLF, after a
bare CR or bare LF (never between the CR and LF of a CRLF), or inside a "segment" (the bytes
between two CR/LF) once the segment's head is decided, i.e. once every pattern anchored at the
segment start has matched or failed. Patterns look at most `run_limit` bytes into a run of NUL,
space and tab, so a head is decided within 2 * `run_limit` + 10 bytes. The two bytes before a
block (its context: CRLF, a bare LF, a bare CR, or the middle of a segment) are put in front of
it for the patterns, so each one sees the right line and segment start.

Lines are split on CRLF only, the one line end RFC 5321 §2.3.8 allows. A block of complete
lines with no bare CR, no bare LF, no NUL and correct dot-stuffing is checked and unstuffed
with whole-block `bytes` operations; other blocks go through one regular expression per rule.
The normalised content is also given to a `TraceScanner` (traces.py) when asked for.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

from filterd.core.errors import InspectorError
from filterd.core.findings import Findings, Kind
from filterd.core.pieces import Pieces
from filterd.core.policy import BareNewline
from filterd.core.traces import Trace, TraceScanner

CRLF = b"\r\n"
_END_OF_DATA = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4
RUN_LIMIT = 1000  # bytes of a NUL/space/tab run the patterns look at (RFC 5321 §4.5.3.1.6)
PIECE = 64 * 1024  # at most this much is processed in one block (plus a head being decided)
_CR, _LF = 13, 10

# The two bytes before a block, put in front of it for the patterns.
_LINE_START = b"\r\n"
_AFTER_LF = b"x\n"  # a bare LF: a segment starts (and a line, unless the mode is "no")
_AFTER_CR = b"x\r"  # a bare CR: a segment starts
_MID_SEGMENT = b"xx"  # inside a segment whose head is decided


class Framing(StrEnum):
    SMTP_DATA = "smtp_data"  # the DATA stream: dot-stuffed, ended by <CRLF>.<CRLF>
    MESSAGE = "message"  # the message itself (milter, a file): not stuffed, ended by finish()


@dataclass(frozen=True, slots=True)
class _Patterns:
    """The slow path's patterns for one run limit. Each matches against a block with its
    context in front, so every segment starts after a CR or an LF; group 1 is what a finding
    points at. Runs of NUL, space and tab are possessive and bounded by the run limit."""

    dot_segment: re.Pattern[bytes]
    message_fake: re.Pattern[bytes]
    command_segment: re.Pattern[bytes]
    unstuffed_after_lf: re.Pattern[bytes]
    unstuffed_after_crlf: re.Pattern[bytes]
    head_dot: re.Pattern[bytes]
    head_command: re.Pattern[bytes]
    long_dot_first: re.Pattern[bytes]
    long_dot_line: re.Pattern[bytes]


@functools.cache
def _patterns(run: int) -> _Patterns:
    # A segment that is a single ".", after NULs and before NULs, spaces or tabs: what a lenient
    # reader may take for the end of data: E09, E10, E22 and every framing variant of
    # docs/explanation/smuggling.md. A space before the dot is indentation, ordinary content,
    # not a terminator.
    dot = rb"\x00{0,%d}+\.[\x00 \t]{0,%d}+(?=[\r\n\x00 \t]|\Z)|\x00{%d}" % (run, run, run + 1)
    # In a message a "." framed by CRLF on both sides (or CRLF and the end) is content: it was
    # ".." on the wire. Only the other "." segments are fake.
    framed = rb"(?<=\r\n)\x00{0,%d}+\.[\x00 \t]{0,%d}+(?:\r\n|\Z)" % (run, run)
    # The commands of a smuggled transaction, in any case (SEC Consult sends them in lower case).
    command = (
        rb"[\r\n]([\x00 \t]{0,%d}+(?:mail[ \t]{1,%d}+from|rcpt[ \t]{1,%d}+to|data|bdat)\b)"
        % (run, run, run)
    )
    # The first "." of a line when the client did not stuff it: not "..", not a "." segment.
    not_stuffed = rb"(?!\.)(?![\x00 \t]{0,%d}+(?:[\r\n\x00 \t]|\Z))" % run
    return _Patterns(
        dot_segment=re.compile(rb"[\r\n](" + dot + rb")"),
        message_fake=re.compile(rb"[\r\n](?!" + framed + rb")(" + dot + rb")"),
        command_segment=re.compile(command, re.IGNORECASE),
        unstuffed_after_lf=re.compile(rb"\n(\.)" + not_stuffed),
        unstuffed_after_crlf=re.compile(rb"\r\n(\.)" + not_stuffed),
        # How far into a segment the patterns above may look (the cut logic adds one byte);
        # each also matches every unfinished beginning, so a head cut short is not decided.
        # A "." line that the run limit makes a fake end even between two CRLFs (fast path):
        # at the block's start, or after an LF. Two patterns, not one with "(?:^|\n)": a
        # pattern that starts with a literal is searched for that literal first, one that
        # starts with an alternation is tried at every byte (about 100 times slower:
        # bench/README.md, "Milter CPU, session 4").
        long_dot_first=re.compile(rb"\.[ \t]{%d}" % (run + 1)),
        long_dot_line=re.compile(rb"\n\.[ \t]{%d}" % (run + 1)),
        head_dot=re.compile(rb"\x00{0,%d}(?:\.[\x00 \t]{0,%d})?" % (run + 1, run + 1)),
        head_command=re.compile(
            rb"[\x00 \t]{0,%d}(?:[A-Za-z]{1,4}(?:[ \t]{1,%d}[A-Za-z]{0,4})?)?" % (run + 1, run + 1)
        ),
    )


# With "no", only CRLF starts a line for dot-stuffing.
_DOT_AFTER_LF = re.compile(rb"\n(\.)")
_DOT_AFTER_CRLF = re.compile(rb"\r\n(\.)")
_CR_WITHOUT_LF = re.compile(rb"\r(?!\n)")
_LF_WITHOUT_CR = re.compile(rb"(?<!\r)\n")


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

    def __init__(  # noqa: PLR0913 (the two tuning knobs are keyword-only, for tests and bench)
        self,
        mode: BareNewline = BareNewline.NORMALIZE,
        framing: Framing = Framing.SMTP_DATA,
        max_size: int = 10_240_000,
        *,
        traces: bool = False,
        piece: int = PIECE,
        run_limit: int = RUN_LIMIT,
    ) -> None:
        if piece <= 0 or run_limit <= 0:
            raise InspectorError("piece and run_limit must be positive")
        self.mode = mode
        self.framing = framing
        self.max_size = max_size
        self.piece = piece
        self.findings = Findings()
        self._re = _patterns(run_limit)
        self._traces = TraceScanner() if traces else None
        self._pending = bytearray()  # unprocessed bytes, after `_context`
        self._pending_offset = 0  # stream offset of _pending[0]
        self._context = _LINE_START
        self._out = Pieces()  # the normalised content, as immutable pieces
        self._keep = True  # content is kept (False once the message is refused or dropped)
        self._skipping = False  # only the end of data and the size are tracked
        self._window = b""  # skipping: two bytes already counted, then up to three not yet
        self._size = 0
        self._trailing = bytearray()
        self._seen_fake = False
        self._done = False
        self.dropped = False  # the content was dropped to free memory (see drop_content())
        # A line of the normalised content may start with "." (False only when sure it does
        # not): dot-stuffing for the next hop can then be skipped (RFC 5321 §4.5.2).
        self.dot_lines = False

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

    @property
    def trace(self) -> Trace | None:
        """The first smuggled command sequence in the content, if traces were asked for."""
        return None if self._traces is None else self._traces.trace

    @property
    def buffered(self) -> int:
        """Bytes of memory this message holds: content kept, unprocessed and trailing bytes."""
        return self._out.size + len(self._pending) + len(self._trailing)

    @property
    def keeping(self) -> bool:
        """The content is kept: False once the message is refused whatever follows (too
        large, a fake end of data outside mode "no", a bare CR/LF in mode "reject"), or the
        content was dropped or released."""
        return self._keep

    def content(self) -> bytes:
        """The normalised, unstuffed content; empty if the message was refused or dropped."""
        if not self._done:
            raise InspectorError("content() before the end of data")
        return self._out.joined()

    def new_pieces(self) -> list[bytes]:
        """The pieces of normalised content finished since the last call, each given once:
        what a consumer can take while the content still arrives (the rest follows once
        done). Nothing more once the content is dropped or refused; what was given before
        is not taken back, so a consumer stops when the message is refused."""
        if self._done:
            self._out.finish()
        return self._out.new()

    def release(self) -> None:
        """Let go of the content (the transaction is over)."""
        self._keep = False
        self._out.clear()

    def drop_content(self) -> None:
        """Drop the content and track only the end of data and the size (out of memory)."""
        self.dropped = True
        if not self._done and not self._skipping:
            self._start_skipping()
        self._keep = False
        self._out.clear()

    def feed(self, data: bytes) -> None:
        if self._done:
            if self.framing is Framing.MESSAGE:
                raise InspectorError("feed() after finish()")
            self._trailing += data
            return
        if self._skipping:
            self._skip(data)
            return
        self._pending += data
        self._drain()

    def finish(self) -> None:
        """End of the input. In MESSAGE framing the last line may lack its CRLF."""
        if self.framing is Framing.SMTP_DATA:
            if not self._done:
                raise InspectorError("input ended before <CRLF>.<CRLF>")
            return
        if self._done:
            return
        if self._pending and not self._skipping:
            self._take(len(self._pending), _MID_SEGMENT)
        if self._traces is not None:
            self._traces.finish()
        self._done = True

    # -- cutting the pending bytes into blocks ------------------------------------------------

    def _drain(self) -> None:
        while self._pending and not (self._done or self._skipping):
            end = min(len(self._pending), self.piece)
            cut, context = self._safe_cut(end)
            if cut == 0 and end < len(self._pending):
                cut, context = self._safe_cut(len(self._pending))  # a head still undecided
            if cut == 0:
                return
            self._take(cut, context)

    def _safe_cut(self, end: int) -> tuple[int, bytes]:
        """The furthest cut in `_pending[:end]` that no pattern can see across, and the
        context of what follows it; (0, ...) when there is none yet."""
        pending = self._pending
        limit = end - 1 if pending[end - 1] == _CR else end  # a CR at the end waits for its LF
        last = max(pending.rfind(b"\r", 0, limit), pending.rfind(b"\n", 0, limit))
        if last >= 0:
            cut = last + 1
            if pending[last] == _CR:
                context = _AFTER_CR  # the byte after it is known and is no LF
            elif last > 0 and pending[last - 1] == _CR:
                context = _LINE_START
            else:
                context = _AFTER_LF  # never cut inside a CRLF: an LF first in _pending is bare
            segment_context = context
        else:
            cut, context, segment_context = 0, self._context, self._context
        if limit > cut and self._head_decided(cut, limit, segment_context):
            return limit, _MID_SEGMENT
        return cut, context

    def _head_decided(self, start: int, limit: int, context: bytes) -> bool:
        """Has every pattern anchored at this segment's start matched or failed?"""
        if context == _MID_SEGMENT:
            return True
        patterns = self._re
        dot = patterns.head_dot.match(self._pending, start, limit)
        command = patterns.head_command.match(self._pending, start, limit)
        head = max(dot.end() if dot else start, command.end() if command else start)
        return head < limit  # one byte after the head decides a lookahead or a \b

    def _take(self, cut: int, context: bytes) -> None:
        with memoryview(self._pending) as view:
            block = bytes(view[:cut])
        del self._pending[:cut]
        offset = self._pending_offset
        self._pending_offset += cut
        before, self._context = self._context, context
        self._block(block, offset, before)
        final = self._refused()
        if final or not self._keep_after_bare():
            self._keep = False
            self._out.clear()
        if final and not self._done:
            self._start_skipping()

    def _refused(self) -> bool:
        """Is the message refused whatever follows? Too large; a fake end of data in every
        mode but "no" (only a later size excess could still change the verdict, and the size
        is still counted)."""
        if self.too_large:
            return True
        return self.mode is not BareNewline.NO and Kind.FAKE_END_OF_DATA in self.findings

    def _keep_after_bare(self) -> bool:
        """In "reject" mode a bare CR/LF refuses the message, but a later fake end of data
        (or a bare LF after a bare CR) changes the verdict: inspect on, keep no content."""
        if self.mode is not BareNewline.REJECT:
            return True
        return Kind.BARE_LF not in self.findings and Kind.BARE_CR not in self.findings

    # -- blocks -------------------------------------------------------------------------------

    def _block(self, block: bytes, offset: int, context: bytes) -> None:
        if self.framing is Framing.SMTP_DATA:
            # The terminator holds a CRLF "." (or is "." first at a line start): one count
            # tells most blocks have none, and the fast path reuses it.
            dots = block.count(b"\r\n.")
            if not dots and block[:1] != b".":
                self._lines(block, offset, context, dots)
                return
            end = _terminator(block, at_line_start=context == _LINE_START)
            if end >= 0:
                # The terminator's own CRLF "." starts at end - 2; none can straddle it.
                before = dots - block.count(b"\r\n.", end - 2) if end >= 2 else 0
                self._lines(block[:end], offset, context, before)
                self._end(block, end)
                return
            self._lines(block, offset, context, dots)
            return
        self._lines(block, offset, context)

    def _end(self, block: bytes, end: int) -> None:
        self._done = True
        self._trailing += block[end + 3 :] + self._pending
        self._pending.clear()
        if self._traces is not None:
            self._traces.finish()

    def _lines(self, block: bytes, offset: int, context: bytes, dots: int | None = None) -> None:
        """`dots`: how many CRLF "." the block holds, when the caller has counted them."""
        fast = self._fast(block, context == _LINE_START, dots)
        if fast is not None:
            self._emit(*fast)
        else:
            self._slow(block, offset, context)

    def _fast(
        self, block: bytes, line_start: bool, dots: int | None = None
    ) -> tuple[bytes, int] | None:
        """The output for a block that needs no regular expression per rule and its number
        of lines (CRLFs), or None.

        Such a block has no bare CR, no bare LF, no NUL, and (SMTP_DATA) every line that starts
        with "." is stuffed. A block that does not start a line may not start with ".": after
        a bare CR/LF that is a segment of its own.
        """
        # After a fake end every later line is checked for smuggled commands. No CR without
        # an LF after it (searched first: on hostile blocks it fails at once, before any
        # count); then equal counts mean no LF without a CR before it.
        if self._seen_fake or _CR_WITHOUT_LF.search(block):
            return None
        lines = block.count(b"\n")
        if block.count(b"\r") != lines or b"\x00" in block:
            return None
        if block[:1] == b"." and not line_start:
            return None
        if self.framing is Framing.MESSAGE:
            # "." framed by CRLF is content, unless the run limit makes it a fake end. Not
            # worth a pass to be sure no line starts with ".": a message is not stuffed
            # again (`b"\n." in block` alone costs more than the search for a long one).
            if self._long_dot_line(block):
                return None
            self.dot_lines = True
            return block, lines
        unstuffed = self._fast_unstuff(block, dots)
        return None if unstuffed is None else (unstuffed, lines)

    def _long_dot_line(self, block: bytes) -> bool:
        """Does a line of this block start with "." and a run longer than the run limit?"""
        patterns = self._re
        return bool(patterns.long_dot_first.match(block) or patterns.long_dot_line.search(block))

    def _fast_unstuff(self, block: bytes, dots: int | None) -> bytes | None:
        """A clean block without its stuffing dots; None if a dotted line was not stuffed."""
        dotted = (block.count(b"\r\n.") if dots is None else dots) + (block[:1] == b".")
        if not dotted:
            return block
        unstuffed = block.replace(b"\r\n..", b"\r\n.")
        if unstuffed[:2] == b"..":
            unstuffed = unstuffed[1:]
        # RFC 5321 §4.5.2: each stuffed line lost one byte; every dotted line must have been.
        if len(block) - len(unstuffed) != dotted:
            return None
        self.dot_lines = True
        return unstuffed

    def _slow(self, block: bytes, offset: int, context: bytes) -> None:
        """Check and normalise any bytes, one regular expression per rule over the whole block.

        Inside a CRLF line every CR and every LF is bare; they cut the line into "segments",
        which a lenient reader would take for lines. Dense runs of CR, LF and "." cost a few
        passes, not a Python step per line.
        """
        self._count_bare(block, offset)
        framed, framed_offset = context + block, offset - len(context)
        self._find_fake_ends(framed, framed_offset)
        if b"." in block:
            self.dot_lines = True  # not worth a pass to be sure
            if self.framing is Framing.SMTP_DATA:
                block = self._unstuff(framed, framed_offset)[len(context) :]
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
        # SMTP_DATA: the real terminator never gets here, so every "." segment is a fake one.
        # MESSAGE: "." framed by CRLF is content; one pattern matches only the other segments.
        fakes = self._re.dot_segment if self.framing is Framing.SMTP_DATA else self._re.message_fake
        first = self._add_matches(Kind.FAKE_END_OF_DATA, fakes, block, offset)
        if first >= 0 and not self._seen_fake:
            self._seen_fake = True
            commands_from = first
        if commands_from >= 0:
            self._add_matches(
                Kind.SMUGGLED_COMMAND, self._re.command_segment, block, offset, commands_from
            )

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
            line_dot, unstuffed = _DOT_AFTER_CRLF, self._re.unstuffed_after_crlf
        else:
            line_dot, unstuffed = _DOT_AFTER_LF, self._re.unstuffed_after_lf
        self._add_matches(Kind.UNSTUFFED_DOT, unstuffed, block, offset)
        return line_dot.sub(_without_the_dot, block)

    def _normalise(self, data: bytes) -> bytes:
        """The bare CRs and LFs of whole lines, as the mode wants them."""
        if self.mode is BareNewline.NO or not (b"\r" in data or b"\n" in data):
            return data
        # Postfix: cleanup_replace_stray_cr_lf, a stray CR becomes a space;
        # smtpd_forbid_bare_newline=normalize, a bare LF ends the line as CRLF does.
        return data.replace(CRLF, b"\n").replace(b"\r", b" ").replace(b"\n", CRLF)

    def _emit(self, data: bytes, lines: int | None = None) -> None:
        """Keep `data` (normalised) and show it to the trace scanner; `lines`: its number
        of line ends when known (every one a CRLF)."""
        self._count_output(len(data))
        if self._keep and not self.too_large:
            self._out.append(data)
        if self._traces is not None and not self.too_large:
            self._traces.feed(data, lines)

    def _count_output(self, size: int) -> None:
        self._size += size
        if self._size > self.max_size and not self.too_large:
            # The offset of a too_large finding is the limit itself: where the content crossed it.
            self.findings.add(Kind.TOO_LARGE, self.max_size)
            self._keep = False
            self._out.clear()

    # -- once refused: the end of data and the size only --------------------------------------

    def _start_skipping(self) -> None:
        self._skipping = True
        self._keep = False
        self._out.clear()
        self._window = self._context  # what came before the pending bytes
        rest = bytes(self._pending)
        self._pending.clear()
        self._skip(rest)

    def _skip(self, data: bytes) -> None:
        """Past a refusal only the real end of data matters (delayed reject), and the size,
        counted exactly as the normalised content would have been."""
        window = self._window + data
        if self.framing is Framing.MESSAGE:
            self._count_skipped(window[:2], window[2:])
            self._window = window[-2:]
            return
        found = window.find(_END_OF_DATA)  # the window's first two bytes may hold its CRLF
        if found >= 0:
            self._count_skipped(window[:2], window[2 : found + 2])
            self._done = True
            self._trailing += window[found + 5 :]
            if self._traces is not None:
                self._traces.finish()
            return
        keep = max(len(window) - 3, 2)  # three bytes may begin the terminator
        self._count_skipped(window[:2], window[2:keep])
        self._window = window[keep - 2 :]

    def _count_skipped(self, before: bytes, chunk: bytes) -> None:
        """Count `chunk` as `_emit` would count its normalised form; `before` is the two
        bytes in front of it (a line end there may pair with the chunk's first bytes)."""
        joined = before + chunk

        def occurrences(needle: bytes) -> int:
            return joined.count(needle) - before.count(needle)

        size = len(chunk)
        if self.mode is not BareNewline.NO:
            size += occurrences(b"\n") - occurrences(b"\r\n")  # a bare LF becomes CRLF
        if self.framing is Framing.SMTP_DATA:
            size -= occurrences(b"\r\n." if self.mode is BareNewline.NO else b"\n.")
        self._count_output(size)


def _without_the_dot(match: re.Match[bytes]) -> bytes:
    return match[0][:-1]


def _terminator(block: bytes, at_line_start: bool = True) -> int:
    """Index of the "." of the first <CRLF>.<CRLF> in a block, or -1."""
    if at_line_start and block[:3] == b".\r\n":
        return 0
    found = block.find(_END_OF_DATA)
    return found + 2 if found >= 0 else -1
