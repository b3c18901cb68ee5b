"""Bounded gunzip and zstd for CompressedPackedForward payloads.

The protocol allows a payload of several concatenated gzip members (Fluentd
appends one member per buffered chunk), so decompression loops over members.
It never holds more than the limit: each step asks zlib for at most the bytes
still allowed, so a gzip bomb stops after ``limit`` bytes, not after it has
filled memory.

``compressed: "zstd"`` (Fluentd 1.19's ``compress zstd``; Fluent Bit's
in_forward accepts it) is read with the same limit, over every frame, in
bounded steps (:func:`unzstd`), so a zstd bomb costs about the limit, not
its expansion.
"""

from __future__ import annotations

import io
import zlib

from .errors import BadCompression, DecompressedTooLarge

_GZIP = 16 + zlib.MAX_WBITS  # wbits for a gzip header and trailer
_STEP = 1 << 20  # produce at most 1 MiB per zlib call, to check the limit often


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress every gzip member in ``data``; raise if the result exceeds ``limit`` bytes."""
    out: list[bytes] = []
    total = 0
    rest = data
    if not rest:
        raise BadCompression("empty gzip payload")
    while rest:
        d = zlib.decompressobj(_GZIP)
        pending = rest
        try:
            while True:
                chunk = d.decompress(pending, min(_STEP, limit - total + 1))
                total += len(chunk)
                if total > limit:
                    raise DecompressedTooLarge(f"gzip payload expands past {limit} bytes")
                out.append(chunk)
                pending = d.unconsumed_tail
                if d.eof or not pending:
                    break
            if not d.eof:
                tail = d.flush()
                total += len(tail)
                if total > limit:
                    raise DecompressedTooLarge(f"gzip payload expands past {limit} bytes")
                out.append(tail)
                if not d.eof:
                    raise BadCompression("gzip payload is truncated")
        except zlib.error as exc:
            raise BadCompression(f"invalid gzip payload: {exc}") from None
        rest = d.unused_data
    return b"".join(out)


#: Most bytes one zstd input byte can turn into: a 3-byte block header and one
#: RLE byte make a block of up to 128 KiB, so about 32 KiB a byte.
_ZSTD_MAX_RATIO = 1 << 15


def unzstd(data: bytes, limit: int) -> bytes:
    """Decompress every zstd frame in ``data``; raise if the result exceeds ``limit`` bytes.

    zstd's decompression object returns all it can make of the input it is
    given, so the input is handed over in pieces small enough that one piece
    cannot expand past what the limit still allows (:data:`_ZSTD_MAX_RATIO`):
    the output never exceeds about twice the limit, however the payload was
    built. Real chunks (ratios near 10) take a few hundred calls.
    """
    import zstandard  # imported here: only a zstd peer pays for loading it

    if not data:
        raise BadCompression("empty zstd payload")
    out: list[bytes] = []
    total = 0
    # max_window_size bounds the decoder's own window buffer, which a frame
    # header chooses (zstd's default cap of 128 MiB would let 10 bytes make it
    # allocate that much); a sender compressing one chunk needs no more than
    # the chunk.
    window = max(1 << 20, 1 << max(limit - 1, 1).bit_length())
    dctx = zstandard.ZstdDecompressor(max_window_size=window)
    rest = memoryview(data)
    try:
        while rest:
            d = dctx.decompressobj()
            pos = 0
            while not d.eof:
                if pos >= len(rest):
                    raise BadCompression("zstd payload is truncated")
                piece = max(16, min(1 << 16, (limit - total) // _ZSTD_MAX_RATIO))
                chunk = d.decompress(rest[pos:pos + piece])
                pos += piece
                total += len(chunk)
                if total > limit:
                    raise DecompressedTooLarge(f"zstd payload expands past {limit} bytes")
                out.append(chunk)
            # d.unused_data holds what followed the frame in the last piece
            pos = min(pos, len(rest)) - len(d.unused_data)
            rest = rest[pos:]
    except zstandard.ZstdError as exc:
        if "too much memory" in str(exc):
            # The frame asks for a window past max_window_size; zstd sizes the window to the
            # content (up to its level's cap), so such a frame expands past the limit too.
            raise DecompressedTooLarge(f"zstd frame needs a window of more than {window} bytes: "
                                       f"its content is larger than the {limit}-byte limit") from None
        raise BadCompression(f"invalid zstd payload: {exc}") from None
    return b"".join(out)
