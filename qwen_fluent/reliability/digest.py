"""What identifies a Forward message as the same message again: :func:`message_digest`.

A client that lost an ack resends the same chunk: Fluent Bit keeps the chunk
on disk or in memory and writes the same bytes again (its ``chunk`` option is
a digest of them), Fluentd resends its buffer chunk with the same chunk id.
The digest is SHA-256, cut to 128 bits, over:

- the tag (the same records under another tag are another stream);
- the ``chunk`` option, the ack id. Alone it identifies nothing (Fluent Bit
  4.2.8 sends one constant id for every Message-mode message), but it never
  differs between a retry and its original, and it does tell apart two
  Fluentd chunks that happen to carry the same records;
- the records: for PackedForward and CompressedPackedForward the payload as
  the sink receives it, which for gzip is the *decompressed* stream. The same
  entries compressed twice need not give the same bytes (another zlib level
  or version, a client that compresses again at each flush), while the
  decompressed stream is what the records are: digesting it identifies the
  records whatever their encoding, and costs the same per byte as digesting
  the smaller compressed form would after decompression anyway. For Message
  and Forward mode (or any mode the connection decoded) the entries, packed
  again as msgpack ``[time, record, metadata]`` triples.

Only a message that asked for an ack (``chunk`` present) gets a digest: a
client that does not wait for acks never learns that a message was lost and
so never resends one, and identical ack-less messages (the same log line
twice, from stdin or a tail without nanosecond times) are two events.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from ..forward.events import Message

#: Bytes of digest kept. 128 bits: the chance that two of 100k remembered
#: digests collide is about 1e-29, and half the memory of SHA-256's 32 bytes.
DIGEST_SIZE = 16
#: Hashed first: digests of another format version never match these (v1 was BLAKE2b).
PERSON = b"qf-dedup-v2"
#: Why SHA-256 and not BLAKE2b: every payload byte is hashed, so this is on
#: the hot path (9 % of serve's profile with BLAKE2b). CPUs with the SHA
#: extensions (every AMD Zen, Intel since Ice Lake / Goldmont) run OpenSSL's
#: SHA-256 at over twice BLAKE2b's speed: 0.30 against 0.66 ms per 512 KiB
#: message measured on the development machine (AMD EPYC). Without them
#: SHA-256 is the slower of the two, by about as much.


def _field(h: Any, data: bytes) -> None:
    """Add ``data`` with its length first, so that ("ab", "c") and ("a", "bc") differ."""
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def _text(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


def message_digest(message: Message) -> bytes | None:
    """The message's digest, or ``None`` for a message that asked for no ack (never deduplicated)."""
    if message.chunk is None:
        return None
    h = hashlib.sha256(PERSON)
    _field(h, _text(message.tag))
    _field(h, _text(message.chunk))
    if message.payload is not None:
        h.update(b"P")
        _field(h, message.payload)
    else:
        h.update(b"E")
        packer = msgpack.Packer(use_bin_type=True, datetime=False)
        for entry in message.entries:
            _field(h, packer.pack((entry[0], entry[1], entry[2] if len(entry) > 2 else None)))
    return h.digest()[:DIGEST_SIZE]


def record_count(message: Message) -> int:
    """How many records ``message`` carries, for ``qwen_fluent_duplicate_records_total``.

    The decoded entries when the connection decoded them; for a deferred
    payload its ``size`` option when the client sent one (Fluent Bit and
    Fluentd do), else the msgpack objects in the payload counted by a
    streaming unpacker (duplicates are rare: this is not the hot path).
    """
    if message.payload is None:
        return len(message.entries)
    size = message.options.get("size")
    if type(size) is int and size >= 0:
        return size
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False)
    unpacker.feed(message.payload)
    count = 0
    try:
        for _ in unpacker:
            count += 1
    except (ValueError, msgpack.UnpackException):
        pass
    return count
