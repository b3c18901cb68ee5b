"""Forward messages built as bytes, without I/O: Message, Forward, PackedForward, CompressedPackedForward.

Each builder returns :class:`Chunk` objects: the exact bytes to write, the
chunk id the receiver must ack (or ``None`` when no ack is asked for), and the
number of records inside. The bytes are built once and kept, so a resend after
a lost connection writes the *same* bytes with the *same* chunk id, which is
what Fluent Bit's forward output does with ``Require_ack_response on`` and
what lets a receiver recognise a duplicate.

What goes on the wire follows Fluent Bit 4.2.8's forward output (see
``tests/vectors/``): times as EventTime (msgpack ext type 0, big-endian
seconds and nanoseconds) unless ``time_as_integer`` (Fluent Bit's
``Time_as_Integer``); an option map with ``size`` (the record count) and, with
acks, ``chunk``; gzip payloads with ``compressed: "gzip"``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgpack

from ..forward import Mode

#: One event to send: seconds since the epoch (float keeps nanoseconds to ~0.2 us) and its record.
Event = tuple[float, dict[str, Any]]

#: gzip level for CompressedPackedForward. Fluent Bit compresses with zlib's
#: default (6); log records of JSON-ish text shrink 5-10x at that level, and
#: the higher levels cost several times the CPU for a few per cent more.
GZIP_LEVEL = 6


class Chunk(NamedTuple):
    """One Forward message ready to write: ``data`` is resent unchanged until ``chunk`` is acked."""

    data: bytes
    chunk: str | None
    records: int
    mode: Mode


def chunk_id(entries: bytes) -> str:
    """The ack id of a message carrying ``entries`` (its records packed as ``[time, record]`` pairs).

    As Fluent Bit 4.2.8 makes it (``tests/vectors/README.md``): base64 of the first 16 bytes of the
    SHA-512 of the entries, 24 characters. The same records give the same id, so a resent chunk, and
    a chunk sent again by a second run of a replay, can be recognised by a receiver that deduplicates.
    (Fluent Bit's Message mode sends one constant id for every message; this client does not copy that.)
    Fluent Bit hashes the chunk as it buffered it, with EventTime times, also when ``Time_as_Integer``
    then writes whole seconds (the ids of the ``time_as_integer_ack`` capture are not the hash of its
    wire entries); :func:`build` passes the EventTime form here for the same reason.
    """
    return base64.b64encode(hashlib.sha512(entries).digest()[:16]).decode("ascii")


def event_time(t: float) -> msgpack.ExtType:
    """Fluent's EventTime: ext type 0, uint32 seconds and uint32 nanoseconds, big-endian."""
    seconds = int(t)
    nanos = int(round((t - seconds) * 1e9))
    if nanos >= 1_000_000_000:  # 0.9999999999 rounds up to the next second
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    return msgpack.ExtType(0, _SECONDS_NANOS.pack(seconds, nanos))


_SECONDS_NANOS = struct.Struct(">II")


def _time(t: float, time_as_integer: bool) -> Any:
    return int(t) if time_as_integer else event_time(t)


def _option(records: int, chunk: str | None, compressed: bool) -> dict[str, Any]:
    option: dict[str, Any] = {"size": records}
    if chunk is not None:
        option["chunk"] = chunk
    if compressed:
        option["compressed"] = "gzip"
    return option


def _pack(obj: Any) -> bytes:
    # use_bin_type: bytes as bin, str as str, as Fluent Bit packs them.
    return msgpack.packb(obj, use_bin_type=True)


def build(tag: str, events: Sequence[Event], mode: Mode = Mode.COMPRESSED_PACKED_FORWARD, *,
          ack: bool = True, time_as_integer: bool = False) -> list[Chunk]:
    """The Forward messages that carry ``events`` under ``tag`` in ``mode``.

    Message mode carries one record per message, so it gives one chunk per
    event (each with its own ack id); every other mode gives one chunk for all
    of them. An empty ``events`` gives no chunk: Forward has no empty message.
    """
    if not events:
        return []
    if mode is Mode.MESSAGE:
        out = []
        for t, record in events:
            chunk = chunk_id(_pack([event_time(t), record])) if ack else None
            data = _pack([tag, _time(t, time_as_integer), record, _option(1, chunk, False)])
            out.append(Chunk(data, chunk, 1, mode))
        return out
    n = len(events)
    payload = packed_entries(events, time_as_integer)
    if ack:
        chunk = chunk_id(packed_entries(events) if time_as_integer else payload)
    else:
        chunk = None
    if mode is Mode.FORWARD:
        # [tag, [entry, ...], option]: msgpack nests by concatenation, so the packed entries go in
        # as they are, between the headers, instead of being packed a second time.
        packer = msgpack.Packer(use_bin_type=True)
        data = b"".join((packer.pack_array_header(3), packer.pack(tag), packer.pack_array_header(n), payload,
                         packer.pack(_option(n, chunk, False))))
        return [Chunk(data, chunk, n, mode)]
    compressed = mode is Mode.COMPRESSED_PACKED_FORWARD
    if compressed:
        # mtime=0: the same events give the same bytes (no clock in the gzip header).
        payload = gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
    return [Chunk(_pack([tag, payload, _option(n, chunk, compressed)]), chunk, n, mode)]


def packed_entries(events: Iterable[Event], time_as_integer: bool = False) -> bytes:
    """``[time, record]`` pairs packed back to back: the payload of PackedForward mode."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(packer.pack([_time(t, time_as_integer), record]) for t, record in events)
