"""Every bound the receiver puts on what a peer can make it hold.

One dataclass, so that the limits are documented in one place and can be set
from the configuration file (``[limits]`` section) or the command line. Each
default says why it is what it is. The core (:mod:`.connection`) enforces the
message-level limits; the asyncio server enforces the connection-level ones.

Memory: buffered input is at most ``max_connections x max_message_bytes``.
Messages are decoded one at a time on the event loop. Decoding real records
costs a few times their size; hostile input costs more, because small msgpack
values become large Python objects. Containers are the worst (an empty map:
1 byte on the wire, a 64-byte dict), so ``max_objects`` counts them; the rest
(a 2-character string: 3 bytes on the wire, about 60 in Python) stays within
about 20 x ``max(max_message_bytes, max_decompressed_bytes)``. Measured with
tracemalloc on the defaults (docs/forward.md): a gzip'd message of under
30 KB that expands to 8 MiB of short strings peaks at about 170 MB; one of
empty containers stops at ``max_objects`` near 90 MB. The usual case (two
Fluent Bit workers per node, chunks of about 2 MB) is far below that.
"""

from __future__ import annotations

import dataclasses

KiB = 1024
MiB = 1024 * KiB


@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits on one connection and on the server as a whole."""

    #: Largest single Forward message, as bytes on the wire. This is also the
    #: largest number of bytes buffered for a connection. Fluent Bit flushes
    #: chunks of at most about 2 MB, and Fluentd's memory buffer caps chunks at
    #: 8 MiB (``chunk_limit_size``); 8 MiB takes either. A Fluentd aggregator
    #: with a file buffer's larger chunks needs this raised.
    max_message_bytes: int = 8 * MiB

    #: Largest payload after gunzip (CompressedPackedForward), summed over all
    #: gzip members of one message. The client compresses one chunk, so this is
    #: a chunk's own size: 8 MiB is 4x a Fluent Bit chunk and Fluentd's memory
    #: chunk limit. It stops a gzip bomb (1000:1 and more) early, because
    #: decompression is done in bounded steps and stops at the limit; and it
    #: bounds what a small compressed message can make the decoder allocate
    #: (see the module docstring).
    max_decompressed_bytes: int = 8 * MiB

    #: Longest msgpack str or bin. A log line of megabytes is already a bug;
    #: the cap exists so a 5-byte header cannot ask for gigabytes. The
    #: PackedForward payload is a str/bin too, so it is as large as a message
    #: can be.
    max_str_bytes: int = 8 * MiB

    #: Most elements in one msgpack array: the entries of one Forward message.
    #: A 16 MiB message of 60-byte records holds about 280k entries; 1M leaves
    #: room and stops a 5-byte header from allocating billions of slots.
    max_array_len: int = 1_000_000

    #: Most keys in one msgpack map (one record, or the kubernetes labels).
    #: Real records have tens of keys; 64k is generous and bounded.
    max_map_len: int = 65_536

    #: Most maps and arrays one message may decode to, packed payload included
    #: (see :class:`~qwen_fluent.forward.decode.ObjectBudget`). A 2 MB Fluent
    #: Bit chunk of kubernetes-enriched records holds about 10k (about six per
    #: record); an 8 MiB message of the smallest real records about 300k. 1M
    #: leaves room and caps the Python objects a hostile message of empty
    #: containers can make at about 72 MB.
    max_objects: int = 1_000_000

    #: Longest msgpack ext payload. EventTime is 8 bytes; nothing in the
    #: protocol uses larger ext types, so 64 is generous.
    max_ext_bytes: int = 64

    #: Seconds a connection may stay silent (no bytes at all) before it is
    #: closed. Fluent Bit closes idle keepalive connections itself after 30 s
    #: (``net.keepalive_idle_timeout``), so this only catches dead or stuck
    #: peers, including one that stalls in the middle of a message.
    idle_timeout: float = 300.0

    #: Seconds a client has to send a valid PING after our HELO. Fluentd's
    #: in_forward closes unauthenticated connections on the first bad message;
    #: a silent one is closed after this.
    handshake_timeout: float = 10.0

    #: Most connections open at once; one more is accepted and closed at once,
    #: and counted. A node's Fluent Bit opens one per output worker (2 by
    #: default); 256 allows many Fluent Bits (an aggregator setup) while staying
    #: well under the common 1024 open-files limit.
    max_connections: int = 256

    #: Bytes read from a socket at a time. 256 KiB keeps the per-read Python
    #: overhead negligible without holding large buffers per connection.
    read_size: int = 256 * KiB

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limits.{field.name} must be a positive number, got {value!r}")
