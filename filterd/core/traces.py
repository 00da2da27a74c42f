"""Traces of an SMTP smuggling attempt that survive inside a message.

A Milter never sees the SMTP framing: Postfix reads the DATA stream, cleans it, and hands over
the message. When Postfix drops a fake end-of-data line (or turns its stray CR/LF into spaces,
`cleanup_replace_stray_cr_lf`), the smuggled transaction that followed it stays in the message
as ordinary body text:

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
  content was normalised; memory is that of one pass over the lines.

It is sans-I/O and pure: bytes in, a `Trace` or None out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 5321 §4.1.1.2-4: "MAIL FROM:", "RCPT TO:", "DATA"; §4.1.2 allows no space before the
# colon, but lenient servers do, and an attacker writes what the target accepts.
_RCPT = re.compile(rb"[ \t]*RCPT[ \t]+TO[ \t]*:", re.IGNORECASE)
_DATA = re.compile(rb"[ \t]*(?:DATA[ \t]*|BDAT[ \t]+\d+(?:[ \t]+LAST)?[ \t]*)$", re.IGNORECASE)
_RCPT_ANYWHERE = re.compile(rb"RCPT[ \t]+TO[ \t]*:", re.IGNORECASE)
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Trace:
    """Where the smuggled sequence starts (0-based line number) and how many RCPT lines it has."""

    line: int
    recipients: int


def find_command_sequence(content: bytes) -> Trace | None:
    """The first MAIL FROM / RCPT TO... / DATA sequence in `content`, or None."""
    if _RCPT_ANYWHERE.search(content) is None:
        return None  # the common case: one regex scan, no split
    lines = _LINE_END.split(content)
    index = 0
    while index < len(lines):
        if _starts_mail(lines[index]):
            recipients = _count_rcpt(lines, index + 1)
            after = index + 1 + recipients
            if recipients and after < len(lines) and _DATA.match(lines[after]):
                return Trace(index, recipients)
        index += 1
    return None


def _starts_mail(line: bytes) -> bool:
    """A MAIL FROM command at the start of the line, or after a fake-dot remnant (" . ")."""
    stripped = line.lstrip(b" \t")
    if _COMMAND_START.match(stripped):
        return True
    return _AFTER_DOT.search(line) is not None


_COMMAND_START = re.compile(rb"MAIL[ \t]+FROM[ \t]*:", re.IGNORECASE)
# "text . MAIL FROM:" or ". MAIL FROM:": a "." segment whose CR/LF framing became spaces.
_AFTER_DOT = re.compile(rb"(?:^|[ \t])\.[ \t]+MAIL[ \t]+FROM[ \t]*:", re.IGNORECASE)


def _count_rcpt(lines: list[bytes], start: int) -> int:
    count = 0
    while start + count < len(lines) and _RCPT.match(lines[start + count]):
        count += 1
    return count
