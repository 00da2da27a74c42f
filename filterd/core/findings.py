"""What the content inspector can find, summarised in bounded memory.

A message may hold millions of bare line feeds; keeping every one would let a sender choose
how much memory filterd uses. So each kind keeps a count and the offset of its first
occurrence, which is enough for a verdict and a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    BARE_LF = "bare_lf"  # <LF> not preceded by <CR> (RFC 5321 §2.3.8)
    BARE_CR = "bare_cr"  # <CR> not followed by <LF>
    NUL = "nul"
    # A "." line framed by anything but <CRLF> on both sides (RFC 5321 §4.1.1.4).
    FAKE_END_OF_DATA = "fake_end_of_data"
    # MAIL/RCPT/DATA/BDAT line after a fake end-of-data: the smuggled transaction.
    SMUGGLED_COMMAND = "smuggled_command"
    # A line starting with a single "." that the client did not dot-stuff (RFC 5321 §4.5.2).
    UNSTUFFED_DOT = "unstuffed_dot"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    count: int
    first_offset: int  # offset in the input stream of the first occurrence


class Findings:
    """Per-kind count and first offset, in order of first occurrence."""

    __slots__ = ("_counts", "_first")

    def __init__(self) -> None:
        self._counts: dict[Kind, int] = {}
        self._first: dict[Kind, int] = {}

    def add(self, kind: Kind, offset: int, count: int = 1) -> None:
        if count <= 0:
            return
        if kind not in self._counts:
            self._counts[kind] = 0
            self._first[kind] = offset
        self._counts[kind] += count

    def __contains__(self, kind: object) -> bool:
        return kind in self._counts

    def __bool__(self) -> bool:
        return bool(self._counts)

    def count(self, kind: Kind) -> int:
        return self._counts.get(kind, 0)

    def as_list(self) -> list[Finding]:
        """Findings in order of first occurrence, whatever order they were added in."""
        ordered = sorted(self._counts, key=lambda kind: (self._first[kind], kind.value))
        return [Finding(kind, self._counts[kind], self._first[kind]) for kind in ordered]

    def kinds(self) -> list[str]:
        """Kind names in order of first occurrence, for a log line."""
        return [finding.kind.value for finding in self.as_list()]
