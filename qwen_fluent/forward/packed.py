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
form, a Fluent Bit group marker (EventTime seconds -1 or -2 as int32: the
reference skips and counts it), a payload cut short, more than
``max_array_len`` entries. A record
that is not a map is the caller's to notice (:func:`is_map`): its typed
decoder refuses it anyway, and only refused records need the check. Values the typed decoder never reads are never
materialised, so the limits that exist to bound the general decoder's memory
(``max_map_len``, ``max_ext_bytes``, the object budget) are not applied to
them here; the payload's own size bounds what this path holds.
"""

from __future__ import annotations

import struct
from operator import attrgetter
from typing import Any, Union

import msgpack
import msgspec

from .decode import ObjectBudget, translate_msgpack_error, unpacker_options
from .errors import ForwardError
from .limits import Limits

_Ext = msgspec.msgpack.Ext
#: A plain time: int or float seconds, or an ext (kept only if it is EventTime: type 0, 8 bytes).
_Time = Union[int, float, _Ext]
#: An entry's time: a plain time, or Fluent Bit's [time, {metadata}] pair.
_EntryTime = Union[int, float, _Ext, tuple[_Time, dict[Any, Any]]]
_code, _data = attrgetter("code"), attrgetter("data")
_ARRAY32 = struct.Struct(">BI")
#: First bytes of a msgpack map: fixmap, map16, map32.
_MAP_HEADS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
#: One decoder per record type asked for (msgspec.Raw, and the consumer's typed record).
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(record_type: Any) -> msgspec.msgpack.Decoder[Any]:
    # Each entry's time is kept as its bytes: :func:`_plain_times` checks them all at once.
    decoder = _decoders.get(record_type)
    if decoder is None:
        decoder = _decoders[record_type] = msgspec.msgpack.Decoder(list[tuple[msgspec.Raw, record_type]])
    return decoder


#: One time as the reference accepts it, for the times :func:`_plain_times` does not take as EventTimes.
_entry_time = msgspec.msgpack.Decoder(_EntryTime)
#: An EventTime's 10 bytes start with these: fixext 8 (0xd7), ext type 0.
_FIXEXT8, _EXT0 = b"\xd7", b"\x00"


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


#: The first 4 bytes of a group marker's EventTime are at least these (seconds 0xFFFFFFFE or 0xFFFFFFFF).
_MARKER_SECONDS = b"\xff\xff\xff\xfe"
_EVENT_TIME = struct.Struct(">II")


def _times_are_plain(times: list[Any]) -> bool:
    """Every time an int, a float or an EventTime, alone or as the first of Fluent Bit's pair, and no group marker.

    Checked by column in C-level passes (measured: 0.15 -> 0.06 us an
    entry): the set of the times' types; for EventTimes the set of their ext
    codes, the set of their lengths and the largest of their bytes; the rare
    pairs one by one.
    """
    kinds = set(map(type, times))
    if _Ext in kinds:
        exts = times if len(kinds) == 1 else [t for t in times if type(t) is _Ext]
        data = list(map(_data, exts))
        if set(map(_code, exts)) != {0} or set(map(len, data)) != {8} or max(data) >= _MARKER_SECONDS:
            return False
    if tuple in kinds:
        for t in times:
            if type(t) is tuple:
                inner = t[0]
                if type(inner) is _Ext and (inner.code != 0 or len(inner.data) != 8 or inner.data >= _MARKER_SECONDS):
                    return False
    return True


def _plain_times(raws: list[Any]) -> list[Any] | None:
    """The entries' times (their bytes, ``raws``) as :func:`entry_seconds` reads them, or ``None`` if one
    is not an int, a float or an EventTime, alone or in Fluent Bit's pair, or is a group marker.

    Fluent Bit sends EventTimes only: then every time is 10 bytes, ``0xd7 0x00`` and 8 bytes of
    seconds and nanoseconds, which a few C-level passes over the joined bytes check for the whole
    message (measured: 0.04 us an entry, against 0.15 to 0.3 for checking decoded ext objects);
    the raw bytes are then the times handed out. A seconds field starting with 0xff (a group marker,
    or a time after 2106) and any other form go the detailed way, time by time.
    """
    n = len(raws)
    if set(map(len, raws)) == {10}:
        joined = b"".join(raws)
        if joined[0::10] == _FIXEXT8 * n and joined[1::10] == _EXT0 * n and b"\xff" not in joined[2::10]:
            return raws
    try:
        times = list(map(_entry_time.decode, raws))
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    return times if _times_are_plain(times) else None


def entry_seconds(t: Any) -> float:
    """An entry's time as :func:`split_packed` hands it out (``times``), in seconds, as the reference reads it.

    Only times :func:`split_packed` accepted come here: an int, a float, an
    EventTime (seconds plus nanoseconds / 1e9, as the reference's ext hook),
    or Fluent Bit's ``(time, {metadata})`` pair.
    """
    if type(t) is msgspec.Raw:  # an EventTime's 10 bytes, as _plain_times hands them out
        sec, nsec = _EVENT_TIME.unpack(bytes(t)[2:])
        return sec + nsec / 1e9
    if type(t) is tuple:
        t = t[0]
    if type(t) is _Ext:
        sec, nsec = _EVENT_TIME.unpack(t.data)
        return sec + nsec / 1e9
    return t


def split_packed(payload: bytes, size: Any, max_entries: int, record_type: Any = msgspec.Raw,
                 times: list[Any] | None = None) -> list[Any] | None:
    """The records of ``payload`` in order, decoded as ``record_type``; ``None`` to decode it the reference way.

    With the default ``msgspec.Raw`` each record is a view of its bytes and
    any map (or other value) passes; with a typed record (a msgspec Struct)
    the whole payload is decoded in one pass, and a single record that does
    not fit the type makes it ``None`` (the caller then splits into Raw
    records). ``size`` is the message's ``size`` option (Fluent Bit sends the
    entry count there); when it is missing the entries are counted first, and
    when it is wrong a Raw split counts and tries again. ``times``, when
    given, is filled with each entry's time as found (read it with
    :func:`entry_seconds`), in the records' order.
    """
    decoder = _decoder(record_type)
    count = size if type(size) is int and 0 < size <= max_entries else None
    for attempt in (0, 1):
        if count is None:
            count = _count(payload)
            if count > max_entries:
                return None
        try:
            items = decoder.decode(_ARRAY32.pack(0xDD, count) + payload)
            break
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            if attempt or record_type is not msgspec.Raw:
                return None
            count = None  # a wrong size option, or an entry the frame refuses: count and try once more
    else:  # pragma: no cover - the loop always breaks or returns
        return None
    stamps = _plain_times([t for t, _ in items])
    if stamps is None:
        return None
    if times is not None:
        times[:] = stamps
    return [record for _, record in items]


def is_map(raw: Any) -> bool:
    """Whether a record from :func:`split_packed` is a msgpack map (the reference counts any other
    record as an invalid entry, ``record_not_map``: a caller checks this for the records it refuses)."""
    return len(raw) > 0 and memoryview(raw)[0] in _MAP_HEADS


def decode_record(raw: Any, limits: Limits, budget: ObjectBudget | None = None) -> Any:
    """One record's bytes (from :func:`split_packed`) decoded the general way, as the connection would.

    Raises a :class:`~.errors.ForwardError` for what the general decoder
    refuses (a value past a length limit, nesting too deep, and with
    ``budget``, the message's maps, arrays and ext values past
    ``max_objects``). Bytes alone do not bound the cost: a record of 8 MiB
    of 3-byte fixext values decodes to 2.8M Python objects, seconds of event
    loop (issue 10), so a caller decoding the records of one message passes
    one budget for all of them. It counts only the records decoded this way,
    so it refuses a message only where the connection would have too.
    """
    try:
        return msgpack.unpackb(raw, **unpacker_options(limits, budget))
    except ForwardError:
        raise  # the budget's own error, raised from inside msgpack's hooks
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise translate_msgpack_error(exc) from None
