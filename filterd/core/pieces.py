"""The normalised content of one message, kept as immutable `bytes` pieces.

Why pieces and not one growing buffer: the inspector's blocks are already `bytes` objects of
up to 64 KiB, so keeping them costs no copy, and a later step can hand each finished piece to
a consumer while the rest still arrives (a scanner stream) without copying or locking
anything: a piece never changes once it is finished.

Guarantees:
- `joined()` is the concatenation of everything appended, in order, whatever the sizes;
- no piece is shorter than MIN_PIECE bytes except one before a long piece and the last one:
  small appends (a flood of one-byte milter packets) are gathered in a buffer first, so the
  list never costs more than a few dozen bytes of overhead per MIN_PIECE bytes of content;
- `new()` returns each finished piece exactly once, in order (the pieces finished since the
  previous call); `finish()` makes the gathered rest a piece of its own.

Sans-I/O: bytes in, bytes out.
"""

from __future__ import annotations

MIN_PIECE = 16 * 1024  # appends shorter than this are gathered into one piece


class Pieces:
    __slots__ = ("_given", "_pieces", "_small", "size")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._small = bytearray()  # short appends, not yet a piece
        self._given = 0  # pieces already returned by new()
        self.size = 0  # bytes appended and not cleared

    def append(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if len(data) >= MIN_PIECE:
            self._flush()
            self._pieces.append(data)
            return
        self._small += data
        if len(self._small) >= MIN_PIECE:
            self._flush()

    def _flush(self) -> None:
        if self._small:
            self._pieces.append(bytes(self._small))
            self._small = bytearray()

    def finish(self) -> None:
        """The content is complete: what was gathered becomes the last piece."""
        self._flush()

    def new(self) -> list[bytes]:
        """The pieces finished since the last call (each is returned once)."""
        fresh = self._pieces[self._given :]
        self._given = len(self._pieces)
        return fresh

    def all(self) -> tuple[bytes, ...]:
        """Every finished piece, in order (call `finish()` first for the whole content)."""
        return tuple(self._pieces)

    def joined(self) -> bytes:
        """The whole content as one `bytes`. Unless `new()` has given some pieces but not
        all, the joined bytes then replace the pieces, so the memory is not held twice."""
        self._flush()
        if len(self._pieces) == 1:
            return self._pieces[0]
        whole = b"".join(self._pieces)
        if self._given in (0, len(self._pieces)):
            self._given = min(self._given, 1) if whole else 0
            self._pieces = [whole] if whole else []
        return whole

    def clear(self) -> None:
        """Let go of every byte (the content was dropped or is no longer needed)."""
        self._pieces = []
        self._small = bytearray()
        self._given = 0
        self.size = 0
