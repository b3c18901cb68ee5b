"""Splitting a PackedForward payload into its records' bytes, without decoding them.

A PackedForward payload is ``[time, record]`` entries packed back to back.
:func:`decode_packed <qwen_fluent.forward.decode.decode_packed>` (the
reference) decodes every entry into Python objects. :func:`split_packed`
instead checks each entry's frame and time and hands back each record as a
``msgspec.Raw``: a view of the record's bytes in the payload, which a typed
decoder of the consumer's then reads (``qwen_fluent.records.typed``). It
builds no dict, list or string of the record.

It gives up (returns ``None``) on anything the reference would treat
specially, so that the caller decodes that payload the reference way and
gets the reference's result, errors and counts included: an entry that is
not a ``[time, record]`` pair, a time that is not an int, a float or an
EventTime (ext 0 of 8 bytes), alone or in Fluent Bit's ``[time, {metadata}]``
form, a payload cut short, more than ``max_array_len`` entries. A record
that is not a map is the caller's to notice (:func:`is_map`): its typed
decoder refuses it anyway, and only refused records need the check. Values the typed decoder never reads are never
materialised, so the limits that exist to bound the general decoder's memory
(``max_map_len``, ``max_ext_bytes``, the object budget) are not applied to
them here; the payload's own size bounds what this path holds.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import msgspec

from .decode import translate_msgpack_error, unpacker_options
from .limits import Limits

_BAD_TIME = object()


def _ext_time(code: int, data: memoryview) -> Any:
    """An EventTime (ext 0, 8 bytes) is a time: any float will do, the metrics do not read it."""
    return 0.0 if code == 0 and len(data) == 8 else _BAD_TIME


_entries = msgspec.msgpack.Decoder(list[tuple[Any, msgspec.Raw]], ext_hook=_ext_time)
_ARRAY32 = struct.Struct(">BI")
#: First bytes of a msgpack map: fixmap, map16, map32.
_MAP_HEADS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def _count(payload: bytes) -> int:
    """How many objects ``payload`` holds, read without building them (msgpack's C ``skip``)."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(payload), 1))
    unpacker.feed(payload)
    n = 0
    try:
        while True:
            unpacker.skip()
            n += 1
    except msgpack.OutOfData:
        return n


def _plain_time(t: Any) -> bool:
    return type(t) is int or type(t) is float  # bool is neither


def split_packed(payload: bytes, size: Any, max_entries: int) -> list[msgspec.Raw] | None:
    """The records of ``payload`` as raw msgpack maps, in order; ``None`` to decode it the reference way.

    ``size`` is the message's ``size`` option (Fluent Bit sends the entry
    count there); when it is missing or wrong the entries are counted first.
    """
    count = size if type(size) is int and 0 < size <= max_entries else None
    for attempt in (0, 1):
        if count is None:
            count = _count(payload)
            if count > max_entries:
                return None
        try:
            items = _entries.decode(_ARRAY32.pack(0xDD, count) + payload)
            break
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            if attempt:
                return None
            count = None  # a wrong size option, or an entry the typed frame refuses: count and try once more
    else:  # pragma: no cover - the loop always breaks or returns
        return None
    # Ints and floats are plain times; look closer only at the rest (EventTime, Fluent Bit's pair).
    for t in [t for t, _ in items if type(t) is not int and type(t) is not float]:
        # Fluent Bit's [time, {metadata}] form, else not a time the fast path takes.
        if not (type(t) is list and len(t) == 2 and _plain_time(t[0]) and type(t[1]) is dict):
            return None
    return [raw for _, raw in items]


def is_map(raw: Any) -> bool:
    """Whether a record from :func:`split_packed` is a msgpack map (the reference counts any other
    record as an invalid entry, ``record_not_map``: a caller checks this for the records it refuses)."""
    return len(raw) > 0 and memoryview(raw)[0] in _MAP_HEADS

def decode_record(raw: Any, limits: Limits) -> Any:
    """One record's bytes (from :func:`split_packed`) decoded the general way, as the connection would.

    Raises a :class:`~.errors.ForwardError` for what the general decoder
    refuses (a value past a length limit, nesting too deep). The object
    budget is not applied: the whole payload was already bounded in bytes.
    """
    try:
        return msgpack.unpackb(raw, **unpacker_options(limits))
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise translate_msgpack_error(exc) from None
