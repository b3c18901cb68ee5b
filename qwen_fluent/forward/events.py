"""What the Forward protocol core hands to its user.

:class:`~qwen_fluent.forward.connection.ForwardConnection` turns bytes into
these objects, one per Forward message (or handshake step). They are plain
data: no sockets, no callbacks. The hot path only ever sees :class:`Message`,
whose ``entries`` is a list of :class:`Entry` tuples.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Union


class Mode(str, enum.Enum):
    """The four carrier modes of Forward protocol v1, plus the heartbeat."""

    MESSAGE = "message"  # [tag, time, record, option?]
    FORWARD = "forward"  # [tag, [[time, record], ...], option?]
    PACKED_FORWARD = "packed_forward"  # [tag, <str|bin of packed entries>, option?]
    COMPRESSED_PACKED_FORWARD = "compressed_packed_forward"  # same, gzip'd


class Signal(enum.IntEnum):
    """Fluent Bit's ``fluent_signal`` option: what kind of data a message carries."""

    LOGS = 0
    METRICS = 1
    TRACES = 2


class Entry(NamedTuple):
    """One event: its time in seconds since the epoch, its record, and Fluent Bit metadata.

    ``time`` is a float (EventTime's nanoseconds survive to about 0.2 us, which
    is finer than any duration we measure); ``metadata`` is the map of Fluent
    Bit's ``[[EventTime, {metadata}], record]`` form, or ``None``.
    """

    time: float
    record: dict[Any, Any]
    metadata: dict[Any, Any] | None = None


class Message(NamedTuple):
    """One decoded Forward message carrying log records.

    ``invalid`` counts entries that were framed correctly but could not be used
    (a record that is not a map, a time that is not a time), keyed by reason;
    they are left out of ``entries`` and counted (the server adds them to
    ``ReceiverStats.records["invalid"]``), never dropped silently. ``chunk`` is the ack id, or ``None`` when the client did
    not ask for an ack. ``size`` is the ``size`` option if the client sent one.
    ``nbytes`` is the message's size on the wire.
    """

    tag: str
    entries: list[Entry]
    mode: Mode
    chunk: str | None
    options: dict[Any, Any]
    nbytes: int
    invalid: dict[str, int]
    #: A PackedForward payload (gunzipped) whose entries were not decoded yet,
    #: when the connection was made with ``defer_packed=True``; ``entries``
    #: is then empty until :func:`~qwen_fluent.forward.decode_packed` (or a
    #: typed decoder of the consumer's) reads it. ``None`` otherwise.
    payload: bytes | None = None
    #: Fluent Bit group markers skipped in this message: entries whose
    #: EventTime seconds are -1 (group start) or -2 (group end) as int32. They
    #: carry a group's metadata and attributes, never a record; they are left
    #: out of ``entries`` and counted here (``records_total{outcome="group_marker"}``).
    group_markers: int = 0
    #: The connection it came on: a number unique within the process
    #: (:attr:`ForwardConnection.id`), so that a consumer can tell a client's
    #: resend on a new connection (a retry after a lost ack) from an identical
    #: message on the same one (two chunks that happen to carry the same
    #: records). ``None`` where no connection made it (tests, other inputs).
    connection: int | None = None


class SkippedMessage(NamedTuple):
    """A well-formed message that is not logs (``fluent_signal`` 1 or 2).

    It is acknowledged (the client delivered it correctly) but its payload is
    not decoded; ``count`` is the client's ``size`` option, or 1 when absent.
    """

    tag: str
    signal: int
    mode: Mode
    chunk: str | None
    count: int
    nbytes: int
    reason: str


class Heartbeat(NamedTuple):
    """A msgpack ``nil`` written on the TCP stream to keep it alive."""

    nbytes: int


class AuthSucceeded(NamedTuple):
    """The client's PING was verified; the PONG is waiting in ``data_to_send()``."""

    hostname: str
    username: str


class AuthFailed(NamedTuple):
    """The client failed the handshake; a PONG with ``reason`` is waiting in
    ``data_to_send()`` and the connection is now closed for input."""

    reason: str
    hostname: str


Event = Union["Message", "SkippedMessage", "Heartbeat", "AuthSucceeded", "AuthFailed", "EndOfStream"]


class _NeedData:
    """Sentinel: the buffered bytes do not yet hold a whole message."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class EndOfStream(NamedTuple):
    """No more events will come: the peer closed its side after a whole message,
    or the core closed the connection (after a failed handshake)."""
