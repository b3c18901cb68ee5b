"""From one decoded msgpack object to one Forward event.

Forward protocol v1 carries events in four modes, told apart by the type of
the second array element:

=========================  ==========================================
second element             mode
=========================  ==========================================
a time (int, float, ext 0) Message ``[tag, time, record, option?]``
an array of entries        Forward ``[tag, [[time, record], ...], option?]``
str or bin                 PackedForward (entries packed back to back),
                           CompressedPackedForward if ``compressed: gzip``
                           or ``compressed: zstd``
=========================  ==========================================

A time may also be Fluent Bit's metadata form ``[time, {metadata}]`` (Fluent
Bit 4.x with ``Retain_Metadata_In_Forward_Mode``, the default in 5.x). A
Message whose time is in that form has an array as second element too; it is
told from Forward mode by the first item of that array being a time, not an
entry.

Fluent Bit 3+ frames groups of records (OpenTelemetry resources and
scopes) with marker entries whose EventTime seconds are -1 (start) and -2
(end) as int32, 0xFFFFFFFF and 0xFFFFFFFE on the wire (``flb_log_event_encoder``'s
group start and end). A marker is not a record: :func:`ext_hook` turns its
time into a :class:`GroupMarker` and :func:`decode_entries` leaves it out and
counts it (``Message.group_markers``).

Two kinds of trouble are kept apart. A message whose frame is wrong (not an
array, tag not a string, option not a map, payload not msgpack or not gzip)
raises a :class:`~.errors.ForwardError`: the connection is closed and nothing
in it is acknowledged. An entry inside a well-formed message that cannot be
used (record not a map, time not a time) is left out and counted in
``Message.invalid`` by reason; the rest of the message is delivered and acked,
since the client resending the same bytes would not fix it.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from .compression import gunzip, unzstd
from .errors import (
    BadCompression,
    ContainerTooLarge,
    ForwardError,
    InvalidMsgpack,
    MalformedMessage,
    NestingTooDeep,
    TooManyObjects,
)
from .events import Entry, Message, Mode, SkippedMessage
from .limits import Limits

_EVENT_TIME = struct.Struct(">II")
_new_tuple = tuple.__new__

#: What one ext value other than an EventTime costs the object budget. Building
#: one costs about ten times a map or an array, and real records carry none
#: (Fluentd and Fluent Bit use ext type 0, the EventTime, only); so a message
#: may hold at most ``max_objects / 10`` of them, and a gzip of 3-byte fixext
#: values stops after a tenth of a second of decoding, not seconds.
EXT_COST = 10

#: EventTime seconds of Fluent Bit's group markers: -2 (group end) and -1
#: (group start) as int32, read as uint32. Seconds at or past the lower one
#: (year 2106) are markers.
GROUP_END_SECONDS = 0xFFFFFFFE
GROUP_START_SECONDS = 0xFFFFFFFF


class GroupMarker(float):
    """The time of a Fluent Bit group marker entry: -1.0 (start) or -2.0 (end). Never a record's time."""

    __slots__ = ()


#: What a decoded time can be: int or float seconds, EventTime (already a float, see
#: ext_hook), a group marker, or a msgpack Timestamp. A bool is not one (``type(True) is bool``).
_TIME_TYPES = (float, int, msgpack.Timestamp, GroupMarker)

#: The key under which decode_entries counts group markers in its ``invalid``
#: dict; :func:`take_markers` moves them out before the dict is reported.
GROUP_MARKER = "group_marker"

#: Reasons an entry is counted as invalid (label values of the ``invalid`` outcome).
INVALID_ENTRY = "entry_not_pair"
INVALID_TIME = "bad_time"
INVALID_RECORD = "record_not_map"


def ext_hook(code: int, data: bytes) -> Any:
    """Turn Fluentd's EventTime (ext type 0: uint32 seconds, uint32 nanoseconds) into float seconds."""
    if code == 0 and len(data) == 8:
        sec, nsec = _EVENT_TIME.unpack(data)
        if sec >= GROUP_END_SECONDS:
            return GroupMarker(sec - (1 << 32))
        return sec + nsec / 1e9
    # msgpack.ExtType(code, data) checks both types in Python (about 3 us); msgpack already
    # guarantees them, so the tuple is built directly (the same type and value, a tenth the cost).
    return _new_tuple(msgpack.ExtType, (code, data))


class ObjectBudget:
    """Counts the maps, arrays and ext values decoded for one message, and stops at ``Limits.max_objects``.

    Byte limits alone do not bound memory: an empty map is one byte on the
    wire and a 64-byte dict in Python, so a hostile message costs about 75
    times its size (measured with tracemalloc, docs/forward.md). Counting
    containers through msgpack's ``object_hook``/``list_hook`` caps that part
    of the cost at about ``max_objects x 72`` bytes, for a few percent of
    decode time. Ext values count too (through ``ext_hook``): a 3-byte
    fixext becomes an ``ExtType`` of about 100 bytes, and a 7.3 KB gzip of
    them expanding to 8 MiB took 3.6 s of event loop and 282 MB (issue 10);
    a real message has one (its EventTime) per entry. The count covers a
    packed payload too, and is reset between messages by the connection.
    """

    __slots__ = ("limit", "remaining")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.remaining = limit

    def reset(self) -> None:
        self.remaining = self.limit

    def hook(self, obj: Any) -> Any:
        self.remaining -= 1
        if self.remaining < 0:
            raise TooManyObjects(f"message decodes to more than {self.limit} maps, arrays and ext values")
        return obj

    def ext_hook(self, code: int, data: bytes) -> Any:
        """:func:`ext_hook`, counted: an EventTime as one object, any other ext as :data:`EXT_COST`.

        The EventTime case is :func:`ext_hook`'s own, inlined: it runs once per
        entry, and a second Python call there costs a few percent of decoding.
        """
        if code == 0 and len(data) == 8:
            self.remaining -= 1
            if self.remaining < 0:
                raise TooManyObjects(f"message decodes to more than {self.limit} maps, arrays and ext values")
            sec, nsec = _EVENT_TIME.unpack(data)
            if sec >= GROUP_END_SECONDS:
                return GroupMarker(sec - (1 << 32))
            return sec + nsec / 1e9
        self.remaining -= EXT_COST
        if self.remaining < 0:
            raise TooManyObjects(f"message decodes to more than {self.limit} maps, arrays and ext values")
        return _new_tuple(msgpack.ExtType, (code, data))


def unpacker_options(limits: Limits, budget: ObjectBudget | None = None) -> dict[str, Any]:
    """The msgpack.Unpacker settings every decoder in this package uses.

    ``unicode_errors='surrogateescape'``: a str that is not valid UTF-8 (the
    PING salt is one, by design) still decodes, and encoding it back with the
    same handler gives the exact bytes. ``strict_map_key=False``: a record
    with integer keys is odd but valid msgpack, not a reason to drop a connection.
    ``budget`` counts maps and arrays (see :class:`ObjectBudget`).
    """
    hooks: dict[str, Any] = {"ext_hook": ext_hook}
    if budget is not None:
        hooks = {"object_hook": budget.hook, "list_hook": budget.hook, "ext_hook": budget.ext_hook}
    return dict(
        hooks,
        raw=False,
        use_list=True,
        strict_map_key=False,
        unicode_errors="surrogateescape",
        max_str_len=limits.max_str_bytes,
        max_bin_len=limits.max_str_bytes,
        max_array_len=limits.max_array_len,
        max_map_len=limits.max_map_len,
        max_ext_len=limits.max_ext_bytes,
    )


def translate_msgpack_error(exc: Exception) -> ForwardError:
    """Map the exceptions msgpack raises on bad input to this package's errors."""
    if isinstance(exc, msgpack.StackError):
        return NestingTooDeep("msgpack containers nest too deeply")
    text = str(exc)
    if isinstance(exc, ValueError) and "exceeds max" in text:
        return ContainerTooLarge(text)
    return InvalidMsgpack(f"{type(exc).__name__}: {text}")


def _time(value: Any) -> float | None:
    t = type(value)
    if t is float or t is int:
        return float(value)
    if t is msgpack.Timestamp:
        return value.to_unix()
    return None


def _text(value: Any, what: str) -> str:
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    raise MalformedMessage(f"{what} must be a string, got {type(value).__name__}")


def decode_entries(items: list[Any], invalid: dict[str, int]) -> list[Entry]:
    """Turn ``[[time, record], ...]`` into Entries, counting what cannot be used.

    The hot loop of the receiver: one type check per field and one tuple per entry.
    """
    entries: list[Entry] = []
    append = entries.append
    for item in items:
        if type(item) is not list or len(item) != 2:
            invalid[INVALID_ENTRY] = invalid.get(INVALID_ENTRY, 0) + 1
            continue
        t, record = item
        if type(record) is not dict:
            invalid[INVALID_RECORD] = invalid.get(INVALID_RECORD, 0) + 1
            continue
        tt = type(t)
        if tt is float or tt is int:
            append(Entry(t, record, None))
            continue
        metadata = None
        if tt is list and len(t) == 2 and type(t[1]) is dict:
            t, metadata = t
        if type(t) is GroupMarker:
            invalid[GROUP_MARKER] = invalid.get(GROUP_MARKER, 0) + 1
            continue
        seconds = _time(t)
        if seconds is None:
            invalid[INVALID_TIME] = invalid.get(INVALID_TIME, 0) + 1
            continue
        append(Entry(seconds, record, metadata))
    return entries


def take_markers(invalid: dict[str, int]) -> int:
    """Remove the group markers :func:`decode_entries` counted in ``invalid``; return how many."""
    return invalid.pop(GROUP_MARKER, 0)


def _packed_entries(
    payload: bytes, limits: Limits, invalid: dict[str, int], budget: ObjectBudget | None
) -> list[Any]:
    """Split a PackedForward payload (msgpack entries back to back) into items."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(payload), 1), **unpacker_options(limits, budget))
    unpacker.feed(payload)
    items: list[Any] = []
    tell = unpacker.tell
    # Where the last whole entry ended. Unpacker.tell() is exact only right
    # after an object was returned: once the payload runs out in the middle of
    # an entry it also counts the bytes of that partial entry.
    end = 0
    try:
        for item in unpacker:
            items.append(item)
            end = tell()
            if len(items) > limits.max_array_len:
                # the same bound as on a Forward mode entries array
                raise ContainerTooLarge(f"packed payload holds more than {limits.max_array_len} entries")
    except ForwardError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise translate_msgpack_error(exc) from None
    if end != len(payload):
        raise MalformedMessage("packed payload ends in the middle of an entry")
    return items


def _signal(options: dict[Any, Any]) -> int:
    """The ``fluent_signal`` option: 0 logs, 1 metrics, 2 traces.

    Fluent Bit sends an integer; Envoy's Fluentd tracer sends the string
    ``"2"`` (with its spans in Forward mode), so a short string of digits
    counts too. Anything else is logs, the protocol's default.
    """
    signal = options.get("fluent_signal", 0)
    kind = type(signal)
    if kind is int:
        return signal
    if kind is str and 0 < len(signal) <= 3 and signal.isascii() and signal.isdigit():
        return int(signal)
    return 0


def decode_message(
    obj: Any, nbytes: int, limits: Limits, budget: ObjectBudget | None = None, defer_packed: bool = False
) -> Message | SkippedMessage:
    """Decode one top-level Forward message (anything but a handshake or heartbeat).

    With ``defer_packed``, a (Compressed)PackedForward payload is gunzipped
    but its entries are left for the consumer: the Message carries it as
    ``payload`` with no entries (see :func:`decode_packed`).
    """
    if type(obj) is not list or not 2 <= len(obj) <= 4:
        raise MalformedMessage(
            f"expected a Forward message array of 2 to 4 items, got {type(obj).__name__}"
            + (f" of {len(obj)}" if isinstance(obj, list) else "")
        )
    tag = _text(obj[0], "tag")
    second = obj[1]
    kind = type(second)

    is_message = kind in _TIME_TYPES
    if (
        kind is list
        and len(second) == 2
        and type(second[0]) in _TIME_TYPES
        and type(second[1]) is dict
        and len(obj) >= 3
        and type(obj[2]) is dict
    ):
        # [tag, [time, {metadata}], record, option?]: Message mode with metadata;
        # in Forward mode every item of the second element is itself an entry array.
        is_message = True
    if is_message:
        if len(obj) < 3:
            raise MalformedMessage("Message mode needs [tag, time, record]")
        option_index = 3
    else:
        if len(obj) > 3:
            raise MalformedMessage(f"Forward/PackedForward mode has at most 3 items, got {len(obj)}")
        option_index = 2

    options: dict[Any, Any] = {}
    if len(obj) > option_index:
        raw_options = obj[option_index]
        if type(raw_options) is dict:
            options = raw_options
        elif raw_options is not None:
            raise MalformedMessage(f"option must be a map, got {type(raw_options).__name__}")

    chunk = options.get("chunk")
    if chunk is not None:
        chunk = _text(chunk, "chunk option")

    if kind is str or kind is bytes:
        compressed = options.get("compressed")
        mode = Mode.PACKED_FORWARD
        if compressed is not None and compressed != "text":
            if compressed != "gzip" and compressed != "zstd":
                raise BadCompression(f"unsupported compression {compressed!r} (gzip and zstd are known)")
            mode = Mode.COMPRESSED_PACKED_FORWARD
    elif is_message:
        mode = Mode.MESSAGE
    elif kind is list:
        mode = Mode.FORWARD
    else:
        raise MalformedMessage(f"second item must be a time, entries or a packed payload, got {kind.__name__}")

    signal = _signal(options)
    if signal != 0:
        size = options.get("size")
        if type(size) is int and size > 0:
            count = size
        else:
            count = len(second) if mode is Mode.FORWARD and second else 1
        return SkippedMessage(tag, signal, mode, chunk, count, nbytes, "non_log_signal")

    invalid: dict[str, int] = {}
    if mode is Mode.FORWARD:
        entries = decode_entries(second, invalid)
    elif mode is Mode.MESSAGE:
        entries = decode_entries([[second, obj[2]]], invalid)
        # Fluent Bit's in_forward takes a Message's metadata from its option
        # map (``metadata``, which must be a map) when the time is a plain time.
        metadata = options.get("metadata")
        if metadata is not None:
            if type(metadata) is not dict:
                raise MalformedMessage(f"metadata option must be a map, got {type(metadata).__name__}")
            if entries and entries[0].metadata is None:
                entries[0] = entries[0]._replace(metadata=metadata)
    else:
        payload = second.encode("utf-8", "surrogateescape") if kind is str else second
        if mode is Mode.COMPRESSED_PACKED_FORWARD:
            if options["compressed"] == "zstd":
                payload = unzstd(payload, limits.max_decompressed_bytes)
            else:
                payload = gunzip(payload, limits.max_decompressed_bytes)
        if defer_packed:
            return Message(tag, [], mode, chunk, options, nbytes, invalid, payload)
        entries = decode_entries(_packed_entries(payload, limits, invalid, budget), invalid)
    return Message(tag, entries, mode, chunk, options, nbytes, invalid, None, take_markers(invalid))


def _containers(obj: Any) -> int:
    """Maps, arrays and ext values in ``obj``, itself included (what ObjectBudget counted for it).

    An EventTime in an option map became a float and is not told from one:
    the count is then short by one per such value, in the client's favour.
    """
    t = type(obj)
    if t is dict:
        return 1 + sum(_containers(k) + _containers(v) for k, v in obj.items())
    if t is list:
        return 1 + sum(_containers(v) for v in obj)
    if t is msgpack.ExtType:
        return EXT_COST
    if t is GroupMarker:
        return 1
    return 0


def decode_packed(message: Message, limits: Limits) -> Message:
    """The general decoding of a deferred packed payload: ``message`` with its entries (the reference path).

    Raises a :class:`~.errors.ForwardError` where the connection would have
    raised it had the payload been decoded there (bad msgpack, a limit, an
    entry cut short); the message must then not be acknowledged.
    """
    if message.payload is None:
        return message
    invalid: dict[str, int] = {}
    budget = ObjectBudget(limits.max_objects)
    # The frame's own maps and arrays (its array, the option map and what it
    # holds) were counted against the same budget when it was unpacked.
    budget.remaining -= 1 + _containers(message.options) if message.options else 1
    items = _packed_entries(message.payload, limits, invalid, budget)
    entries = decode_entries(items, invalid)
    return message._replace(entries=entries, invalid=invalid, payload=None, group_markers=take_markers(invalid))
