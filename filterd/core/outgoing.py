"""The content as the next hop gets it after DATA: filterd's header fields on top, older
copies of them removed, dot-stuffed, ending in CRLF; as a list of pieces, not one copy.

Guarantees:
- `b"".join(data_pieces(pieces, fields))` is byte for byte
  `dot_stuff(prepend(b"".join(pieces), fields))` (headers.py, inspector.py), for any cut of
  the content into pieces;
- the content is not copied: pieces go out as they are, except the one holding the header
  section when a sender-made copy of a field is removed, and a piece with a line that starts
  with "." (RFC 5321 §4.5.2), which gets its dots in one `bytes.replace`;
- `dot_lines=False` (the inspector is sure no line starts with ".") skips the search for
  such lines, the one pass over the content that stuffing costs.

Sans-I/O: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Sequence

from filterd.core.headers import field_lines, header_end, without_fields

CRLF = b"\r\n"


def data_pieces(
    pieces: Sequence[bytes], fields: Sequence[tuple[str, str]], *, dot_lines: bool = True
) -> list[bytes]:
    """The pieces to send between the 354 and the final ".": see the module's guarantees."""
    out = [piece for piece in pieces if piece]
    if fields:
        out = [field_lines(fields), *_without_copies(out, fields)]
    if dot_lines:
        out = _stuffed(out)
    if _tail(out) not in (b"", CRLF):
        out.append(CRLF)  # the last line ends, so ".\r\n" can follow
    return out


def _without_copies(pieces: list[bytes], fields: Sequence[tuple[str, str]]) -> list[bytes]:
    """The content without arrived copies of `fields`, changing only the first piece when
    its header section ends inside it (on a whole line); else the content joined once."""
    if not pieces:
        return []
    first = pieces[0]
    end = header_end(first)
    if end < len(first) and first.find(CRLF, end) >= 0:
        # The line after the section is whole in this piece: later bytes cannot extend it.
        return [without_fields(first, fields, end), *pieces[1:]]
    whole = b"".join(pieces)
    return [without_fields(whole, fields, header_end(whole))]


def _stuffed(pieces: list[bytes]) -> list[bytes]:
    """RFC 5321 §4.5.2: a "." more before every line that starts with "." (a line starts
    after CRLF and at the start of the content), also where a CRLF "." spans two pieces."""
    out: list[bytes] = []
    tail = CRLF  # the content's start counts as a line start
    for piece in pieces:
        joint = tail + piece[:2]
        # Only one "\r\n." can span the joint: its dot is the piece's first or second byte.
        spans = joint.find(b"\r\n.", max(len(tail) - 2, 0), len(tail) + 2)
        dot = spans + 2 - len(tail) if 0 <= spans < len(tail) else -1
        stuffed = piece.replace(b"\r\n.", b"\r\n..")
        if dot == 0:
            stuffed = b"." + stuffed
        elif dot == 1:
            stuffed = stuffed[:1] + b"." + stuffed[1:]
        out.append(stuffed)
        tail = (tail + piece)[-2:]
    return out


def _tail(pieces: list[bytes]) -> bytes:
    """The last two bytes of the pieces together (fewer if they hold fewer)."""
    tail = b""
    for piece in reversed(pieces):
        tail = piece[-2:] + tail
        if len(tail) >= 2:
            return tail[-2:]
    return tail
