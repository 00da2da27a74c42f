"""Traces of an SMTP smuggling attempt that survive inside a message.

A Milter never sees the SMTP framing: Postfix reads the DATA stream, cleans it, and hands over
the message. Behind Postfix the proxy endpoint sees the same: when Postfix drops a fake
end-of-data line (or turns its stray CR/LF into spaces, `cleanup_replace_stray_cr_lf`), the
smuggled transaction that followed it stays in the message as ordinary body text:

    MAIL FROM:<attacker@example.com>
    RCPT TO:<victim@example.com>
    DATA

This module finds such a sequence. It guarantees:
- a trace is a MAIL FROM line, directly followed by one or more RCPT TO lines, directly followed
  by a DATA or BDAT line; command words in any case, as SMTP allows (RFC 5321 §2.4);
- the MAIL FROM line may start with the remnant of a fake end of data: a "." between spaces,
  which is what a "." framed by stray CR/LF becomes once Postfix has replaced them by spaces;
- one of these lines alone, or the lines out of order, is not a trace: a message may quote
  a command, and the sequence is what the smuggling needs (RFC 5321 §3.3);
- lines are split on CRLF, bare LF and bare CR alike, so the answer does not depend on how the
  content was normalised;
- a line longer than LINE_LIMIT bytes (from its start, or from the "." of a remnant) is no
  command line: RFC 5321 §4.5.3.1.4 allows 512 octets and Postfix's line_length_limit is 2048,
  so no server takes such a line as a command;
- `TraceScanner` takes the content in any chunks and gives the same answer as one pass over the
  whole (the first sequence, its line and its RCPT count); it keeps at most the last unfinished
  line (LINE_LIMIT + 1 bytes) and a state of three numbers, and each `feed()` costs a few
  whole-text regular-expression passes over the new bytes, never a Python step per line.

It is sans-I/O and pure: bytes in, a `Trace` or None out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LINE_LIMIT = 4096

_SEP = rb"(?:\r\n|\r|\n)"
_FITS = rb"(?=[^\r\n]{0,%d}(?:[\r\n]|\Z))" % LINE_LIMIT  # the rest of the line is short enough
# RFC 5321 §4.1.1.2-4: "MAIL FROM:", "RCPT TO:", "DATA"; §4.1.2 allows no space before the
# colon, but lenient servers do, and an attacker writes what the target accepts. The keyword
# is checked (lookahead) before the line length, so that most positions fail on one byte.
_MAIL_KEYWORD = rb"MAIL[ \t]+FROM[ \t]*:"
_MAIL = (
    rb"(?:(?:^|(?<=[\r\n]))(?=[ \t]*" + _MAIL_KEYWORD + rb")" + _FITS + rb"[ \t]*"
    # "text . MAIL FROM:" or ". MAIL FROM:": a "." segment whose CR/LF framing became spaces.
    rb"|(?:^|(?<=[\r\n \t]))(?=\.[ \t]+"
    + _MAIL_KEYWORD
    + rb")"
    + _FITS
    + rb"\.[ \t]+)"
    + _MAIL_KEYWORD
    + rb"[^\r\n]*"
)
_RCPT = _FITS + rb"[ \t]*RCPT[ \t]+TO[ \t]*:[^\r\n]*"
_DATA = _FITS + rb"[ \t]*(?:DATA[ \t]*|BDAT[ \t]+\d+(?:[ \t]+LAST)?[ \t]*)(?=[\r\n]|\Z)"
# The whole sequence; group "rcpt" holds one separator per RCPT line.
_SEQUENCE = re.compile(
    _MAIL + rb"(?P<rcpt>(?:" + _SEP + _RCPT + rb")+)" + _SEP + _DATA, re.IGNORECASE
)
# A sequence that has begun and may go on in the next bytes: complete lines up to the end.
_UNFINISHED = re.compile(
    _MAIL + rb"(?P<rcpt>(?:" + _SEP + _RCPT + rb")*)" + _SEP + rb"\Z", re.IGNORECASE
)
# What stands for the lines of an unfinished sequence at the start of the next bytes.
_AFTER_MAIL = b"MAIL FROM:\n"
_AFTER_RCPT = b"MAIL FROM:\nRCPT TO:\n"
_NOT_LINE_START = b"x"  # the kept bytes are the end of a longer line


@dataclass(frozen=True, slots=True)
class Trace:
    """Where the smuggled sequence starts (0-based line number) and how many RCPT lines it has."""

    line: int
    recipients: int


def line_ends(text: bytes, end: int | None = None) -> int:
    """Line ends in `text[:end]`: CRLF, bare CR and bare LF each count once."""
    end = len(text) if end is None else end
    crs = text.count(b"\r", 0, end)
    lfs = text.count(b"\n", 0, end)
    if crs == 0 or lfs == 0:
        return crs + lfs
    return crs + lfs - text.count(b"\r\n", 0, end)


def _may_hold_rcpt(text: bytes) -> bool:
    # A cheap filter first: every RCPT line has a colon, and most blocks of a body have none.
    return b":" in text and b"rcpt" in text.lower()


class TraceScanner:
    """Feed the content with `feed()`, call `finish()` at its end; `trace` is the first one."""

    def __init__(self) -> None:
        self.trace: Trace | None = None
        self._carry = bytearray()  # the unfinished last line, or its last LINE_LIMIT + 1 bytes
        self._carry_cut = False  # the carry lost its start: its first byte starts no line
        self._line = 0  # line number of the carry's first byte
        self._mail_line = 0  # the MAIL line of an unfinished sequence...
        self._recipients = -1  # ...and its RCPT lines so far; -1: no sequence has begun

    def feed(self, data: bytes, line_count: int | None = None) -> None:
        """The next bytes; `line_count`, when the caller knows it, is `line_ends(data)` (the
        inspector's clean blocks: every line end a CRLF), which saves three passes."""
        if self.trace is not None or not data:
            return
        if b"\r" not in data and b"\n" not in data and not self._carry.endswith(b"\r"):
            self._carry += data  # the carry holds no line end, and still does
            self._limit_carry()
            return
        if self._recipients < 0 and b":" not in data and not self._carry_may_matter():
            self._feed_plain(data, line_count)
            return
        text = bytes(self._carry) + data
        # The last line end that is sure: an LF, or a CR with a byte after it (not an LF).
        end = max(text.rfind(b"\n"), text.rfind(b"\r", 0, len(text) - 1)) + 1
        lines, rest = text[:end], text[end:]
        self._scan(lines)
        self._line += line_ends(lines)
        self._carry = bytearray(rest)
        self._carry_cut = False
        self._limit_carry()

    def _carry_may_matter(self) -> bool:
        return b":" in self._carry or self._carry.endswith(b"\r")

    def _feed_plain(self, data: bytes, line_count: int | None) -> None:
        """No colon, so no MAIL or RCPT line ends here and none begins: count the lines and
        keep the last one, without copying the bytes (the common case: a body)."""
        end = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        # The carry does not end in CR here, so the data's line ends are all that is new.
        self._line += line_ends(data, end) if line_count is None else line_count
        self._carry = bytearray(data[end:])
        self._carry_cut = False
        self._limit_carry()

    def finish(self) -> None:
        """The end of the content: the unfinished last line is a whole line now."""
        if self.trace is None and self._carry:
            self._scan(bytes(self._carry), final=True)
        self._carry = bytearray()

    def _limit_carry(self) -> None:
        if len(self._carry) > LINE_LIMIT + 1:
            # No command line is this long; keep what a "text . MAIL FROM:" remnant may need.
            del self._carry[: len(self._carry) - LINE_LIMIT - 1]
            self._carry_cut = True
            self._recipients = -1

    def _prefix(self) -> bytes:
        if self._carry_cut:
            return _NOT_LINE_START
        if self._recipients < 0:
            return b""
        return _AFTER_MAIL if self._recipients == 0 else _AFTER_RCPT

    def _scan(self, lines: bytes, final: bool = False) -> None:
        """Look for a sequence in whole `lines` that start where the carry started."""
        if self._recipients < 0 and not _may_hold_rcpt(lines):
            if not final:
                self._state_from_last_line(lines)
            return
        prefix = self._prefix()
        text = prefix + lines
        found = _SEQUENCE.search(text)
        if found is not None:
            self.trace = self._trace(found, prefix)
        elif not final:
            self._set_state(_UNFINISHED.search(text), prefix)

    def _trace(self, found: re.Match[bytes], prefix: bytes) -> Trace:
        recipients = line_ends(found["rcpt"])
        if found.start() < len(prefix):  # the sequence began in earlier bytes
            carried = self._recipients - (1 if self._recipients > 0 else 0)  # the prefix's RCPT
            return Trace(self._mail_line, carried + recipients)
        line = self._line + line_ends(found.string[len(prefix) : found.start()])
        return Trace(line, recipients)

    def _set_state(self, unfinished: re.Match[bytes] | None, prefix: bytes) -> None:
        if unfinished is None:
            self._recipients = -1
            return
        recipients = line_ends(unfinished["rcpt"])
        if unfinished.start() < len(prefix):
            self._recipients += recipients - (1 if self._recipients > 0 else 0)  # as in _trace
            return
        self._mail_line = self._line + line_ends(
            unfinished.string[len(prefix) : unfinished.start()]
        )
        self._recipients = recipients

    def _state_from_last_line(self, lines: bytes) -> None:
        """No RCPT in `lines`: only a MAIL line at their very end can begin a sequence."""
        body = lines[:-2] if lines.endswith(b"\r\n") else lines[:-1]
        start = max(body.rfind(b"\r"), body.rfind(b"\n")) + 1
        if start:  # search() from `start` still lets the lookbehinds see the line end before
            unfinished = _UNFINISHED.search(lines, start)
        else:
            unfinished = _UNFINISHED.search(self._prefix() + lines)
        self._recipients = -1 if unfinished is None else 0
        if unfinished is not None:
            self._mail_line = self._line + line_ends(lines[:start])


def find_command_sequence(content: bytes) -> Trace | None:
    """The first MAIL FROM / RCPT TO... / DATA sequence in `content`, or None."""
    scanner = TraceScanner()
    scanner.feed(content)
    scanner.finish()
    return scanner.trace
