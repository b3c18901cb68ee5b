"""Bounded gunzip for CompressedPackedForward payloads.

The protocol allows a payload of several concatenated gzip members (Fluentd
appends one member per buffered chunk), so decompression loops over members.
It never holds more than the limit: each step asks zlib for at most the bytes
still allowed, so a gzip bomb stops after ``limit`` bytes, not after it has
filled memory.
"""

from __future__ import annotations

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
