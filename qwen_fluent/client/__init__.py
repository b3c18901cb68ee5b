"""A Fluent Forward protocol client: what Fluent Bit's ``forward`` output does, for replays, demos and tests.

Two halves, as in :mod:`qwen_fluent.forward` (the server side):

- without I/O: :func:`build` turns events into :class:`Chunk` objects (the
  bytes of a Message, Forward, PackedForward or CompressedPackedForward
  message, its ack id and its record count); :class:`ClientHandshake` answers
  a HELO and checks the PONG; :class:`ReplyReader` and :func:`ack_of` read acks;
- :class:`ForwardSender`, a blocking socket sender: TCP, TLS
  (:func:`tls_context`) or a Unix socket, the shared-key handshake, acks with
  a timeout, and on a lost connection a new one and the same bytes again,
  a bounded number of times.

It sits on the server floor (it may import the bottom floor): the CLI's
``send`` and ``demo`` use it, and the receiver never does.
"""

from ..forward import Mode
from .errors import (
    AckTimeout,
    ClientError,
    ConnectionLost,
    DeliveryFailed,
    HandshakeError,
    HandshakeRefused,
    SenderClosed,
    TLSFailed,
    UnexpectedReply,
)
from .messages import Chunk, Event, build, chunk_id, event_time, packed_entries
from .replies import ClientHandshake, ReplyReader, ack_of
from .sender import ForwardSender, SenderStats, tls_context

__all__ = [
    "AckTimeout",
    "Chunk",
    "ClientError",
    "ClientHandshake",
    "ConnectionLost",
    "DeliveryFailed",
    "Event",
    "ForwardSender",
    "HandshakeError",
    "HandshakeRefused",
    "Mode",
    "ReplyReader",
    "SenderClosed",
    "SenderStats",
    "TLSFailed",
    "UnexpectedReply",
    "ack_of",
    "build",
    "chunk_id",
    "event_time",
    "packed_entries",
    "tls_context",
]
