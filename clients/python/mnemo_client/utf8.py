"""Splitting UTF-8 byte streams into chunks that are each valid UTF-8 on their own.

The server accepts a document split anywhere, but protobuf for Python only sends `string` fields
that are valid UTF-8 per message, so the client cuts only at character boundaries. Pure
functions; no gRPC, no generated stubs.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

# The longest UTF-8 encoding of one code point.
MAX_CHAR_BYTES = 4


class InvalidUtf8Error(ValueError):
    """Input that is not valid UTF-8; `offset` is the position of the first bad byte."""

    def __init__(self, offset: int, reason: str):
        super().__init__(f"invalid UTF-8 at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


def _is_continuation(byte: int) -> bool:
    """True for a UTF-8 continuation byte (0b10xxxxxx)."""
    return byte & 0xC0 == 0x80


def utf8_boundary(data: bytes, limit: int) -> int:
    """The largest cut ≤ `limit` at which `data[:cut]` ends on a UTF-8 character boundary.

    A cut is a boundary when the byte after it is not a continuation byte (or the data ends
    there). Looks back at most 3 bytes: in valid UTF-8 a character is at most 4 bytes, so if no
    boundary is found that close the data is not valid UTF-8 and `limit` is returned (decoding
    then reports the error). Returns 0 when `data[:limit]` holds no complete character.
    """
    if limit >= len(data):
        return len(data)
    if limit <= 0:
        return 0
    cut = limit
    while cut > 0 and limit - cut < MAX_CHAR_BYTES - 1 and _is_continuation(data[cut]):
        cut -= 1
    if _is_continuation(data[cut]):
        return limit  # no lead byte close enough: invalid; let the decoder say where
    return cut


def split_utf8(data: bytes, max_bytes: int) -> list[str]:
    """Splits UTF-8 `data` into decoded chunks of at most `max_bytes` bytes each.

    Each chunk ends on a character boundary, so each decodes on its own and the chunks
    concatenate to `data.decode("utf-8")`. `max_bytes` must be at least 4 (one character of any
    length fits). Raises InvalidUtf8Error (with the offset of the first bad byte) when `data` is
    not valid UTF-8.
    """
    if max_bytes < MAX_CHAR_BYTES:
        raise ValueError(f"max_bytes must be at least {MAX_CHAR_BYTES}, got {max_bytes}")
    chunks = []
    pos = 0
    while pos < len(data):
        cut = pos + utf8_boundary(data[pos:pos + max_bytes + 1], max_bytes)
        chunks.append(_decode(data[pos:cut], pos))
        pos = cut
    return chunks


def iter_utf8_chunks(stream: BinaryIO, chunk_bytes: int) -> Iterator[str]:
    """Reads a binary stream and yields decoded chunks of at most `chunk_bytes` bytes each.

    Like `split_utf8` but incremental: a character split by a read is carried into the next
    chunk. Raises InvalidUtf8Error (with the stream offset of the first bad byte) on invalid
    UTF-8, including a character truncated by the end of the stream.
    """
    if chunk_bytes < MAX_CHAR_BYTES:
        raise ValueError(f"chunk_bytes must be at least {MAX_CHAR_BYTES}, got {chunk_bytes}")
    buffer = b""
    offset = 0  # stream offset of buffer[0]
    eof = False
    while True:
        while not eof and len(buffer) <= chunk_bytes:
            block = stream.read(chunk_bytes)
            if not block:
                eof = True
            buffer += block
        if not buffer:
            return
        cut = utf8_boundary(buffer, chunk_bytes)
        if cut == 0:  # cannot happen for valid UTF-8 with chunk_bytes >= 4
            cut = min(len(buffer), chunk_bytes)
        yield _decode(buffer[:cut], offset)
        offset += cut
        buffer = buffer[cut:]


def _decode(piece: bytes, offset: int) -> str:
    """Decodes strictly; `offset` is the input position of `piece[0]` (for the error)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidUtf8Error(offset + e.start, e.reason) from None
