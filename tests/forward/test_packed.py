"""Deferred packed payloads: the same entries, or the same refusal, as decoding in the connection.

``ForwardConnection(defer_packed=True)`` leaves a PackedForward payload in
``Message.payload``; :func:`decode_packed` (the reference) must then give
exactly the Message the connection gives without deferring, for every real
Fluent Bit capture (plain, gzip, metadata form, Forward mode untouched), and
:func:`split_packed` must hand over one raw record per entry, each decoding
(:func:`decode_record`) to the record the connection decoded. Where
``split_packed`` declines, the reference decides: odd times, entries that are
not pairs, a payload cut short, a wrong ``size`` option.
"""

from __future__ import annotations

import struct

import msgpack
import pytest

from qwen_fluent.forward import (
    NEED_DATA,
    EndOfStream,
    ForwardError,
    Limits,
    Message,
    Mode,
    decode_packed,
    decode_record,
    is_map,
    split_packed,
)

from .test_vectors import CAPTURES, _connection_for, _ids

LIMITS = Limits()


def _messages(capture, defer: bool) -> list[Message]:
    conn = _connection_for(capture)
    conn.defer_packed = defer
    conn.receive_data(capture.client)
    conn.receive_data(b"")
    out = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or isinstance(event, EndOfStream):
            return out
        if isinstance(event, Message):
            out.append(event)


@pytest.mark.parametrize("capture", [c for c in CAPTURES if c.case != "shared_key_wrong"], ids=_ids)
def test_a_deferred_capture_decodes_to_the_same_messages(capture) -> None:
    plain = _messages(capture, defer=False)
    deferred = _messages(capture, defer=True)
    assert len(deferred) == len(plain)
    for got, want in zip(deferred, plain):
        if want.mode.value.endswith("packed_forward"):
            assert got.payload is not None and got.entries == []
            raws = split_packed(got.payload, got.options.get("size"), LIMITS.max_array_len)
            assert raws is not None and all(is_map(raw) for raw in raws)
            assert [decode_record(raw, LIMITS) for raw in raws] == [e.record for e in want.entries]
        else:
            assert got.payload is None
        assert decode_packed(got, LIMITS) == want


def _payload(*entries) -> bytes:
    return b"".join(msgpack.packb(e, datetime=False) for e in entries)


EVENT_TIME = msgpack.ExtType(0, struct.pack(">II", 1, 2))


@pytest.mark.parametrize("entries", [
    [[msgpack.Timestamp(1, 0), {"a": 1}]],                     # a msgpack Timestamp: the reference converts it
    [[True, {"a": 1}]],                                        # a bool is no time
    [[msgpack.ExtType(0, b"1234"), {"a": 1}]],                 # ext 0 of the wrong size
    [[1, {"a": 1}, 3]],                                        # not a pair
    [[[1, "not a map"], {"a": 1}]],                            # metadata form with a non-map
    ["just a string"],
], ids=["timestamp", "bool", "short-ext", "triple", "bad-metadata", "not-an-array"])
def test_split_declines_what_the_reference_treats_specially(entries) -> None:
    payload = _payload(*entries)
    assert split_packed(payload, len(entries), LIMITS.max_array_len) is None


def test_split_takes_plain_times_eventtime_and_the_metadata_form_and_counts_without_size() -> None:
    payload = _payload([1, {"a": 1}], [1.5, {"b": 2}], [EVENT_TIME, {"c": 3}], [[EVENT_TIME, {}], {"d": 4}],
                       [2, "x"])
    for size in (5, None, 3, 99, "5"):  # right, missing, wrong, too large, not an int
        raws = split_packed(payload, size, LIMITS.max_array_len)
        assert raws is not None and len(raws) == 5
        assert [is_map(r) for r in raws] == [True, True, True, True, False]
        assert decode_record(raws[3], LIMITS) == {"d": 4}


def test_a_payload_cut_short_or_past_the_entry_limit_is_the_reference_s() -> None:
    payload = _payload([1, {"a": 1}], [2, {"b": 2}])
    assert split_packed(payload[:-1], 2, LIMITS.max_array_len) is None
    assert split_packed(payload, None, 1) is None
    message = Message("t", [], Mode.PACKED_FORWARD, None, {}, len(payload), {}, payload[:-1])
    with pytest.raises(ForwardError):
        decode_packed(message, LIMITS)


def test_decode_packed_counts_the_frame_against_the_object_budget() -> None:
    """The frame's array and option map count, as in the connection: a payload that just fits there fits here."""
    limits = Limits(max_objects=1 + 1 + 2)  # frame array, option map, then two record maps
    payload = _payload([1, {"a": 1}])  # one entry array + one record map
    message = Message("t", [], Mode.PACKED_FORWARD, "c", {"chunk": "c"}, 0, {}, payload)
    assert decode_packed(message, limits).entries[0].record == {"a": 1}
    with pytest.raises(ForwardError):
        decode_packed(message._replace(payload=payload * 2), limits)
