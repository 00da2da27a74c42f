"""Trace headers on delivered mail, and no sender-made copies of them.

`prepend()` puts filterd's own header fields (X-Virus-Scanned, X-Virus-Status) at the top of
the message and removes every field of the same name already in the header section, with its
folded continuation lines (RFC 5322 §2.2.3), so a sender cannot pre-load "X-Virus-Status:
Clean". Only the header section is touched: it ends at the first empty line (RFC 5322 §2.1),
or at the first line that is neither a field nor a continuation.

Bytes in, bytes out. The content is the inspector's normalised output: lines end in CRLF.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CRLF = b"\r\n"
# RFC 5322 §3.6.8: a field name is printable US-ASCII except ":"; then the colon.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_UNSAFE = re.compile(r"[\r\n\x00]")


def prepend(content: bytes, fields: Sequence[tuple[str, str]]) -> bytes:
    """`content` with `fields` on top and older copies of those names removed."""
    if not fields:
        return content
    return field_lines(fields) + without_fields(content, fields, header_end(content))


def field_lines(fields: Sequence[tuple[str, str]]) -> bytes:
    """`fields` as header lines, each ending in CRLF."""
    return b"".join(_field_line(name, value) for name, value in fields)


def _field_line(name: str, value: str) -> bytes:
    # A value never carries a line break onto the wire (RFC 5322 §2.2: fields are one line
    # unless folded by us).
    return f"{name}: {_UNSAFE.sub(' ', value)}".encode("ascii", "replace") + CRLF


# The header section: field lines, each with its continuation lines (RFC 5322 §2.2.3), up to
# the first line that is neither (the empty line, or a body line). One match, in C: the
# content is never split into lines, so a 10 MB body costs nothing here.
_HEADER_SECTION = re.compile(
    rb"(?:[\x21-\x39\x3b-\x7e]+[ \t]*:[^\r\n]*(?:\r\n|\Z)(?:[ \t][^\r\n]*(?:\r\n|\Z))*)*"
)


def without_fields(content: bytes, fields: Sequence[tuple[str, str]], end: int) -> bytes:
    """Drop the fields named in `fields` (and their continuation lines) from the header
    section, `content[:end]` (`header_end()`); `content` itself when none is there."""
    names = {name.lower().encode("ascii") for name, _ in fields}
    header = content[:end]
    alternatives = b"|".join(re.escape(name) for name in sorted(names))
    field = re.compile(
        rb"^(?:" + alternatives + rb")[ \t]*:[^\r\n]*(?:\r\n|\Z)(?:[ \t][^\r\n]*(?:\r\n|\Z))*",
        re.IGNORECASE | re.MULTILINE,
    )
    kept = field.sub(b"", header)
    return content if len(kept) == len(header) else kept + content[end:]


def header_end(content: bytes) -> int:
    """Where the header section of `content` ends: after its last field or continuation
    line (RFC 5322 §2.1); 0 when it has none."""
    match = _HEADER_SECTION.match(content)
    return match.end() if match else 0
