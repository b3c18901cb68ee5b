"""What counts as the same message: digests of messages decoded by the real Forward core from wire bytes."""

from __future__ import annotations

import gzip
import zlib

import msgpack
import pytest

from qwen_fluent.forward import ForwardConnection, Message
from qwen_fluent.reliability import message_digest, record_count
from tests.support.forward import event_time, forward_message

RECORDS = [(1700000000.25, {"request_id": f"r{i}", "status": "success", "total_time_ms": 10 + i}) for i in range(3)]


def decode(wire: bytes, defer_packed: bool = True) -> Message:
    conn = ForwardConnection(defer_packed=defer_packed)
    conn.receive_data(wire)
    event = conn.next_event()
    assert isinstance(event, Message), event
    return event


def compressed(tag: str, chunk: str | None, level: int, entries: list = RECORDS) -> bytes:
    payload = b"".join(msgpack.packb([event_time(t), r], use_bin_type=True) for t, r in entries)
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    body = c.compress(payload) + c.flush()
    option = {"size": len(entries), "compressed": "gzip"}
    if chunk is not None:
        option["chunk"] = chunk
    return msgpack.packb([tag, body, option], use_bin_type=True)


@pytest.mark.parametrize("packed", [False, True])
def test_a_resend_of_the_same_bytes_has_the_same_digest(packed: bool) -> None:
    wire = forward_message("llm", RECORDS, "c1", packed=packed)
    first, again = decode(wire), decode(wire)
    assert message_digest(first) == message_digest(again) is not None
    assert len(message_digest(first) or b"") == 16


def test_gzip_digests_the_records_not_their_compression() -> None:
    """Compressed at level 1 and at level 9 (different bytes on the wire): one message, one digest."""
    fast, best = compressed("llm", "c1", 1), compressed("llm", "c1", 9)
    assert fast != best
    d1, d9 = message_digest(decode(fast)), message_digest(decode(best))
    assert d1 == d9 is not None
    # and the same records sent uncompressed in PackedForward are the same payload, the same digest
    assert message_digest(decode(forward_message("llm", RECORDS, "c1", packed=True))) == d1
    assert gzip.decompress(msgpack.unpackb(fast)[1]) == decode(fast).payload


def test_the_chunk_id_is_part_of_the_digest_but_never_all_of_it() -> None:
    base = message_digest(decode(forward_message("llm", RECORDS, "c1")))
    # Another chunk id, same records: Fluentd's two chunks that happen to carry the same records.
    assert message_digest(decode(forward_message("llm", RECORDS, "c2"))) != base
    # The same chunk id, other records: Fluent Bit's constant Message-mode id.
    other = [(t, {**r, "status": "error"}) for t, r in RECORDS]
    assert message_digest(decode(forward_message("llm", other, "c1"))) != base
    # Another tag: another stream.
    assert message_digest(decode(forward_message("llm.other", RECORDS, "c1"))) != base


def test_message_mode_entries_are_digested_with_their_times() -> None:
    """Message mode ``[tag, time, record, option]``: the one entry, with its EventTime."""
    record = {"log": "INFO ready"}
    one = msgpack.packb(["llm", event_time(1700000000.5), record, {"chunk": "constant"}], use_bin_type=True)
    later = msgpack.packb(["llm", event_time(1700000001.5), record, {"chunk": "constant"}], use_bin_type=True)
    assert message_digest(decode(one)) == message_digest(decode(one))
    assert message_digest(decode(one)) != message_digest(decode(later))


def test_a_message_without_an_ack_request_is_never_deduplicated() -> None:
    assert message_digest(decode(forward_message("llm", RECORDS, None))) is None


@pytest.mark.parametrize("defer", [False, True])
def test_record_count_of_each_form(defer: bool) -> None:
    assert record_count(decode(forward_message("llm", RECORDS, "c1", packed=True), defer_packed=defer)) == 3
    assert record_count(decode(compressed("llm", "c1", 6), defer_packed=defer)) == 3
    wire = msgpack.packb(["llm", b"".join(msgpack.packb([1, {"a": 1}]) for _ in range(4)), {"chunk": "x"}])
    assert record_count(decode(wire, defer_packed=defer)) == 4  # no size option: counted in the payload
