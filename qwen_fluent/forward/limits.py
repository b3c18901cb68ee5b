"""Every bound the receiver puts on what a peer can make it hold.

One dataclass, so that the limits are documented in one place and can be set
from the configuration file (``[limits]`` section) or the command line. Each
default says why it is what it is. The core (:mod:`.connection`) enforces the
message-level limits; the asyncio server enforces the connection-level ones.

Memory: buffered input is at most ``max_connections x max_message_bytes``
for authenticated (or, without a shared key, all) connections, and
``max_unauthenticated_connections x max_unauthenticated_bytes`` for the
rest; one source address holds at most ``max_connections_per_address`` of
the slots. The ``docs/security.md`` page has the threat model.
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

    #: Seconds a whole message has to arrive, from its first byte to its last.
    #: The idle timeout alone restarts at every byte, so a peer trickling one
    #: byte every few seconds (slow-loris) held its connection forever. 60 s
    #: lets an 8 MiB message arrive over a 1.2 Mbit/s link; a Fluent Bit on the
    #: cluster network sends its 2 MB chunks in milliseconds.
    message_deadline: float = 60.0

    #: Seconds a client has to send a valid PING after our HELO. Fluentd's
    #: in_forward closes unauthenticated connections on the first bad message;
    #: a silent one is closed after this.
    handshake_timeout: float = 10.0

    #: Most connections open at once; one more is accepted and closed at once,
    #: and counted. A node's Fluent Bit opens one per output worker (2 by
    #: default); 256 allows many Fluent Bits (an aggregator setup) while staying
    #: well under the common 1024 open-files limit.
    max_connections: int = 256

    #: Most bytes a connection may send before its PING verified (shared key
    #: on). A PING is six short strings: hostname, 16-byte salt, 128-hex-digit
    #: SHA-512 digest, user name, password digest, about 300 bytes with a long
    #: hostname. 4 KiB takes any real one; without this, an unauthenticated
    #: peer could make the receiver buffer ``max_message_bytes`` (8 MiB) per
    #: connection before a single check (issue 10: 250 such peers, 1.9 GB).
    max_unauthenticated_bytes: int = 4 * KiB

    #: Most connections waiting for their PING at once (shared key on). They
    #: draw from this pool as well as from ``max_connections``; when it is
    #: full, the one that has waited longest is closed to make room (reason
    #: ``unauthenticated_evicted``), so idle attackers cannot keep real clients
    #: out, which send their PING within a round trip of the HELO.
    max_unauthenticated_connections: int = 32

    #: Most connections open at once from one source address (TCP and TLS; a
    #: Unix socket peer is local and not limited by this). A node's Fluent Bit
    #: opens one per output worker (2 by default); 32 leaves room for an
    #: aggregator with many workers, while one address can no longer take all
    #: ``max_connections`` slots (issue 10: 1000 idle connections did).
    max_connections_per_address: int = 32

    #: Most bytes all connections together may hold in partial messages. When
    #: a read takes the total past it, the connection holding the largest
    #: partial message is closed (reason ``memory_budget``; not acked, so a
    #: real client resends). A node's Fluent Bit has a chunk or two of about
    #: 2 MB in flight; 128 MiB holds 16 messages of the 8 MiB maximum at
    #: once, and keeps buffers, the process (about 45 MiB) and one hostile
    #: decode (about 170 MB, docs/forward.md) inside the DaemonSet's 512 MiB
    #: (issue 10: 64 peers holding 7.9 MB each took it to 578 MiB).
    max_buffered_bytes: int = 128 * MiB

    #: Bytes read from a socket at a time. 256 KiB keeps the per-read Python
    #: overhead negligible without holding large buffers per connection.
    read_size: int = 256 * KiB

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limits.{field.name} must be a positive number, got {value!r}")
