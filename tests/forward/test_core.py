"""Byte-level tests of the sans-IO Forward core: every mode, time form, option, the ack,
the handshake, heartbeats, splits, limits and every protocol error.

Messages are built here with msgpack (or byte by byte where the wire type
matters) independently of the decoder under test; expected digests are
computed here from the protocol specification, not taken from the core.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import pytest

from qwen_fluent.forward import (
    NEED_DATA,
    AuthConfig,
    AuthFailed,
    AuthSucceeded,
    EndOfStream,
    Entry,
    ForwardConnection,
    ForwardError,
    Heartbeat,
    Limits,
    Message,
    Mode,
    SkippedMessage,
    State,
)
from qwen_fluent.forward import errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "forward.md"

T0 = 1_700_000_000
REC = {"request_id": "r1", "status": "success", "total_time_ms": 12}


def et(sec: int, nsec: int = 0) -> msgpack.ExtType:
    """Fluentd's EventTime: ext type 0, big-endian uint32 seconds and nanoseconds."""
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def drain(conn: ForwardConnection) -> list:
    out = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)
        if isinstance(event, EndOfStream):
            return out


def decode(data: bytes, limits: Limits | None = None) -> list:
    """Every event from ``data`` followed by end of stream (EndOfStream left out)."""
    conn = ForwardConnection(limits=limits)
    conn.receive_data(data)
    conn.receive_data(b"")
    events = drain(conn)
    assert isinstance(events[-1], EndOfStream)
    return events[:-1]


def one(data: bytes, limits: Limits | None = None) -> Message | SkippedMessage:
    (event,) = decode(data, limits)
    return event


def rejects(data: bytes, error: type[ForwardError], limits: Limits | None = None, match: str | None = None):
    conn = ForwardConnection(limits=limits)
    conn.receive_data(data)
    with pytest.raises(error, match=match) as info:
        drain(conn)
    assert type(info.value) is error  # the specific class, not a parent
    assert info.value.reason in errors.REASONS
    assert conn.state is State.CLOSED
    return info.value


# -- modes -------------------------------------------------------------------


def test_message_mode_three_items():
    data = pack(["llm.a", et(T0, 5), REC])
    message = one(data)
    assert message == Message("llm.a", [Entry(T0 + 5e-9, REC, None)], Mode.MESSAGE, None, {}, len(data), {})


def test_message_mode_with_options_and_ack():
    data = pack(["llm.a", T0, REC, {"chunk": "c1", "size": 1}])
    message = one(data)
    assert message.mode is Mode.MESSAGE and message.chunk == "c1" and message.options == {"chunk": "c1", "size": 1}
    assert ForwardConnection().ack(message) == b"\x81\xa3ack\xa2c1"


def test_message_mode_nil_option():
    """Docker 18's fluentd log driver sends a nil option; Fluent Bit lets it pass, so do we."""
    message = one(pack(["llm.a", T0, REC, None]))
    assert message.options == {} and message.entries[0].record == REC


def test_message_mode_metadata_option():
    """Fluent Bit's in_forward reads a Message's metadata from the ``metadata`` option."""
    message = one(pack(["llm.a", et(T0), REC, {"metadata": {"trace_id": "abc"}}]))
    assert message.entries == [Entry(T0, REC, {"trace_id": "abc"})]
    rejects(pack(["llm.a", et(T0), REC, {"metadata": "abc"}]), errors.MalformedMessage)


def test_forward_mode_with_and_without_option():
    entries = [[et(T0, i), dict(REC, i=i)] for i in range(3)]
    bare = one(pack(["llm.a", entries]))
    assert bare.mode is Mode.FORWARD and bare.chunk is None and bare.options == {}
    assert [e.record["i"] for e in bare.entries] == [0, 1, 2]
    with_option = one(pack(["llm.a", entries, {"size": 3, "chunk": "k"}]))
    assert with_option.entries == bare.entries and with_option.chunk == "k"


def test_forward_mode_empty_entries():
    message = one(pack(["llm.a", [], {"chunk": "e"}]))
    assert message.entries == [] and message.invalid == {} and message.chunk == "e"


def _packed(n: int = 3) -> bytes:
    return b"".join(pack([et(T0, i), dict(REC, i=i)]) for i in range(n))


def test_packed_forward_bin_payload():
    message = one(pack(["llm.a", _packed(), {"size": 3}]))
    assert message.mode is Mode.PACKED_FORWARD
    assert [e.record["i"] for e in message.entries] == [0, 1, 2]
    assert message.entries[2].time == pytest.approx(T0 + 2e-9, abs=1e-7)


def test_packed_forward_str_payload():
    """Fluentd sends the payload as msgpack str holding binary (not UTF-8) bytes."""
    payload = _packed() + pack([et(T0), {"b": b"\xff\xfe"}])
    data = b"\x93\xa5llm.a" + b"\xda" + struct.pack(">H", len(payload)) + payload + b"\x80"
    message = one(data)
    assert message.mode is Mode.PACKED_FORWARD and len(message.entries) == 4
    assert message.entries[3].record == {"b": b"\xff\xfe"}


def test_compressed_packed_forward_one_member():
    message = one(pack(["llm.a", gzip.compress(_packed()), {"compressed": "gzip", "size": 3}]))
    assert message.mode is Mode.COMPRESSED_PACKED_FORWARD
    assert [e.record["i"] for e in message.entries] == [0, 1, 2]


def test_compressed_packed_forward_concatenated_members():
    """Fluentd appends one gzip member per buffered chunk: all members are read, in order."""
    parts = [b"".join(pack([T0, {"i": i}]) for i in range(k, k + 2)) for k in (0, 2, 4)]
    payload = b"".join(gzip.compress(p) for p in parts)
    message = one(pack(["llm.a", payload, {"compressed": "gzip"}]))
    assert [e.record["i"] for e in message.entries] == [0, 1, 2, 3, 4, 5]


def test_compressed_member_boundary_may_split_an_entry():
    """Members are concatenated before the entries are read, so an entry may span two members."""
    raw = _packed(2)
    payload = gzip.compress(raw[:7]) + gzip.compress(raw[7:])
    message = one(pack(["llm.a", payload, {"compressed": "gzip"}]))
    assert [e.record["i"] for e in message.entries] == [0, 1]


def test_compressed_text_means_uncompressed():
    message = one(pack(["llm.a", _packed(), {"compressed": "text"}]))
    assert message.mode is Mode.PACKED_FORWARD and len(message.entries) == 3


@pytest.mark.parametrize("payload", [b"not gzip at all", b"", gzip.compress(b"\x92\x01\x80")[:-4]], ids=["garbage", "empty", "truncated"])
def test_bad_gzip_payload(payload):
    rejects(pack(["llm.a", payload, {"compressed": "gzip"}]), errors.BadCompression)


def test_unknown_compression():
    rejects(pack(["llm.a", _packed(), {"compressed": "zstd"}]), errors.BadCompression, match="zstd")


def test_packed_payload_ending_inside_an_entry():
    """A payload cut anywhere but between entries is refused; msgpack's tell() alone does not notice
    a cut right after a str header, so every cut point is tried."""
    raw = _packed()
    boundaries = {0}
    unpacker = msgpack.Unpacker()
    unpacker.feed(raw)
    for _ in unpacker:
        boundaries.add(unpacker.tell())
    for cut in range(1, len(raw)):
        for compressed in (False, True):
            payload = gzip.compress(raw[:cut]) if compressed else raw[:cut]
            data = pack(["llm.a", payload, {"compressed": "gzip"}] if compressed else ["llm.a", payload])
            if cut in boundaries:
                assert len(one(data).entries) == sorted(boundaries).index(cut)
            else:
                rejects(data, errors.MalformedMessage)


# -- times -------------------------------------------------------------------


@pytest.mark.parametrize(
    "time_obj,expected",
    [
        (et(T0, 0), T0),
        (et(T0, 999_999_999), T0 + 0.999999999),
        (et(0, 1), 1e-9),
        (et(2**32 - 3, 0), 2**32 - 3),
        (T0, T0),
        (2**40, 2**40),
        (T0 + 0.5, T0 + 0.5),
        (msgpack.Timestamp(T0, 250_000_000), T0 + 0.25),
    ],
    ids=["eventtime", "eventtime-max-nsec", "eventtime-zero", "eventtime-max-sec", "int", "uint64", "float", "msgpack-timestamp"],
)
@pytest.mark.parametrize("mode", ["message", "forward", "packed"])
def test_time_forms(time_obj, expected, mode):
    if mode == "message":
        data = pack(["t", time_obj, REC])
    elif mode == "forward":
        data = pack(["t", [[time_obj, REC]]])
    else:
        data = pack(["t", pack([time_obj, REC])])
    (entry,) = one(data).entries
    assert entry.time == pytest.approx(expected, abs=1e-9 * max(1, expected) * 1e-6 + 1e-9)
    assert entry.metadata is None


def test_eventtime_keeps_nanoseconds_to_a_quarter_microsecond():
    (entry,) = one(pack(["t", et(T0, 123_456_789), REC])).entries
    assert abs(entry.time - (T0 + 0.123456789)) < 2.5e-7


def test_float32_time():
    data = b"\x93\xa1t\xca" + struct.pack(">f", 1.5) + b"\x80"
    assert one(data).entries[0].time == 1.5


@pytest.mark.parametrize("mode", ["forward", "packed", "compressed"])
def test_metadata_time_form(mode):
    """Fluent Bit's ``Retain_Metadata_In_Forward_Mode``: entries are ``[[EventTime, {metadata}], record]``."""
    items = [[[et(T0, i), {"trace_id": f"t{i}"}], dict(REC, i=i)] for i in range(2)]
    if mode == "forward":
        data = pack(["t", items])
    else:
        raw = b"".join(pack(i) for i in items)
        data = pack(["t", gzip.compress(raw), {"compressed": "gzip"}] if mode == "compressed" else ["t", raw])
    message = one(data)
    assert [(e.time, e.record["i"], e.metadata) for e in message.entries] == [
        (pytest.approx(T0, abs=1e-6), 0, {"trace_id": "t0"}),
        (pytest.approx(T0, abs=1e-6), 1, {"trace_id": "t1"}),
    ]


def test_message_mode_with_metadata_time_form():
    message = one(pack(["t", [et(T0), {"m": 1}], REC, {"chunk": "c"}]))
    assert message.mode is Mode.MESSAGE and message.entries == [Entry(T0, REC, {"m": 1})] and message.chunk == "c"


def test_message_with_metadata_time_is_told_from_forward_by_its_time():
    """``[tag, [x, {..}], {..}]`` is a Message with a metadata time only when x is a time;
    otherwise it is a Forward message whose two entries are both invalid."""
    assert one(pack(["t", [T0, {"m": 1}], REC])).mode is Mode.MESSAGE
    message = one(pack(["t", [None, {"m": 1}], {}]))
    assert message.mode is Mode.FORWARD and message.invalid == {"entry_not_pair": 2}


def test_every_entry_is_counted_once_or_rejected_with_a_reason():
    items = [
        [T0, REC],  # ok
        [et(T0), REC],  # ok
        [[et(T0), {"m": 1}], REC],  # ok
        [T0, "not a map"],  # record_not_map
        [T0, [1, 2]],  # record_not_map
        ["2024-01-01", REC],  # bad_time
        [msgpack.ExtType(5, b"12345678"), REC],  # bad_time: not ext 0
        [msgpack.ExtType(0, b"1234"), REC],  # bad_time: ext 0 of the wrong size
        [None, REC],  # bad_time
        [True, REC],  # bad_time: a bool is not a time
        [[et(T0), "meta"], REC],  # bad_time: metadata not a map
        [T0],  # entry_not_pair
        [T0, REC, "extra"],  # entry_not_pair
        {"time": T0},  # entry_not_pair
        "junk",  # entry_not_pair
    ]
    for data in (pack(["t", items]), pack(["t", b"".join(pack(i) for i in items)])):
        message = one(data)
        assert len(message.entries) == 3
        assert message.invalid == {"record_not_map": 2, "bad_time": 6, "entry_not_pair": 4}
        assert len(message.entries) + sum(message.invalid.values()) == len(items)


def test_message_mode_invalid_record_is_counted():
    message = one(pack(["t", T0, "a string", {"chunk": "c"}]))
    assert message.entries == [] and message.invalid == {"record_not_map": 1} and message.chunk == "c"


# -- options -----------------------------------------------------------------


@pytest.mark.parametrize("signal", [1, 2])
@pytest.mark.parametrize("mode", ["forward", "packed", "compressed"])
def test_non_log_signal_is_skipped_not_decoded(signal, mode):
    """fluent_signal 1 (metrics) or 2 (traces): counted and acked, never taken for log records."""
    payload = b"\x83\xa4meta\x80\xa7metrics\x90\xc1"  # a cmetrics-like blob, not valid entries at all
    options = {"chunk": "m1", "size": 7, "fluent_signal": signal}
    if mode == "forward":
        data = pack(["metrics", [[T0, {"name": "cpu"}]], options])
    elif mode == "packed":
        data = pack(["metrics", payload, options])
    else:
        data = pack(["metrics", gzip.compress(payload), dict(options, compressed="gzip")])
    event = one(data)
    assert isinstance(event, SkippedMessage)
    assert (event.signal, event.count, event.chunk, event.reason) == (signal, 7, "m1", "non_log_signal")
    assert ForwardConnection().ack(event) == pack({"ack": "m1"})


def test_non_log_signal_without_size():
    event = one(pack(["traces", [[T0, {}], [T0, {}]], {"fluent_signal": 2}]))
    assert isinstance(event, SkippedMessage) and event.count == 2
    event = one(pack(["traces", b"\x00", {"fluent_signal": 1}]))
    assert isinstance(event, SkippedMessage) and event.count == 1


def test_envoy_string_signal_is_skipped():
    """Envoy's Fluentd tracer sends its spans in Forward mode with ``fluent_signal: "2"`` (a string)."""
    data = pack(["envoy.trace", [[T0, {"resourceSpans": []}]], {"fluent_signal": "2", "TimeFormat": "DateTime"}])
    event = one(data)
    assert isinstance(event, SkippedMessage) and event.signal == 2 and event.count == 1


@pytest.mark.parametrize("value", [0, "0", None, "logs", True, "9" * 5000])
def test_log_signal_values(value):
    message = one(pack(["llm.a", [[T0, REC]], {"fluent_signal": value}]))
    assert isinstance(message, Message) and message.entries[0].record == REC


def test_size_option_is_reported_not_trusted():
    message = one(pack(["llm.a", [[T0, REC]], {"size": 1000}]))
    assert len(message.entries) == 1 and message.options["size"] == 1000


# -- ack ---------------------------------------------------------------------


def test_ack_is_never_sent_implicitly():
    """The core builds an ack only when asked, after the consumer took the records."""
    conn = ForwardConnection()
    conn.receive_data(pack(["llm.a", [[T0, REC]], {"chunk": "c1"}]))
    (message,) = drain(conn)
    assert conn.data_to_send() == b""
    assert conn.ack(message) == b"\x81\xa3ack\xa2c1"


def test_no_ack_without_chunk():
    assert ForwardConnection().ack(one(pack(["llm.a", [[T0, REC]]]))) == b""


def test_ack_is_str_typed_at_every_length():
    """Fluent Bit treats a bin-typed ack as a failure: key and chunk are msgpack str (fixstr, str8, str16)."""
    for chunk in ("x" * 24, "y" * 40, "z" * 300):
        ack = ForwardConnection().ack(one(pack(["t", [[T0, REC]], {"chunk": chunk}])))
        assert ack[:5] == b"\x81\xa3ack"
        assert ack[5] in (0xA0 | len(chunk), 0xD9, 0xDA) and ack[5] not in (0xC4, 0xC5, 0xC6)
        assert msgpack.unpackb(ack) == {"ack": chunk}


def test_ack_returns_the_exact_chunk_bytes():
    """A chunk id that is not UTF-8, or sent as bin, comes back byte for byte (as str)."""
    raw_chunk = b"\xff\xfe\x00id"
    data = b"\x93\xa1t\x91\x92\x01\x80\x81\xa5chunk\xa5" + raw_chunk
    ack = ForwardConnection().ack(one(data))
    assert ack == b"\x81\xa3ack\xa5" + raw_chunk
    bin_chunk = one(pack(["t", [[T0, REC]], {"chunk": b"abc"}]))
    assert ForwardConnection().ack(bin_chunk) == b"\x81\xa3ack\xa3abc"


def test_rejected_message_yields_nothing_to_ack():
    """A message that breaks the protocol is never delivered, so it can never be acked;
    the messages after it on that connection are not delivered either."""
    good = pack(["t", [[T0, REC]], {"chunk": "after"}])
    conn = ForwardConnection()
    conn.receive_data(pack(["t", [[T0, REC]], {"chunk": 5}]) + good)
    with pytest.raises(errors.MalformedMessage):
        conn.next_event()
    assert conn.data_to_send() == b""
    assert isinstance(conn.next_event(), EndOfStream)
    with pytest.raises(errors.ConnectionClosedError):
        conn.receive_data(good)


# -- heartbeat, many messages, splits ------------------------------------------------


def test_heartbeat():
    events = decode(b"\xc0" + pack(["t", T0, REC]) + b"\xc0\xc0")
    assert events[0] == Heartbeat(1) and isinstance(events[1], Message) and events[2:] == [Heartbeat(1), Heartbeat(1)]


def test_many_messages_in_one_read():
    data = b"".join(pack(["t", [[T0 + i, {"i": i}]], {"chunk": f"c{i}"}]) for i in range(1000))
    conn = ForwardConnection()
    conn.receive_data(data)
    events = drain(conn)
    assert [e.chunk for e in events] == [f"c{i}" for i in range(1000)]
    assert sum(e.nbytes for e in events) == len(data) and conn.buffered_bytes == 0


def _stream() -> bytes:
    """One connection's worth of every mode, time form, option and a heartbeat."""
    meta_items = pack([[et(T0, 7), {"m": 1}], REC])
    return b"".join(
        [
            pack(["t", et(T0, 1), REC]),
            b"\xc0",
            pack(["t", T0, REC, {"chunk": "a", "metadata": {"k": "v"}}]),
            pack(["t", [[T0 + 0.5, REC], [et(T0, 2), REC]], {"size": 2, "chunk": "b"}]),
            pack(["t", _packed(4) + meta_items]),
            b"\x93\xa1t\xc4\x00\x80",  # PackedForward with an empty bin payload
            pack(["t", gzip.compress(_packed(2)) + gzip.compress(meta_items), {"compressed": "gzip", "chunk": "c"}]),
            pack(["m", b"blob", {"fluent_signal": 1, "size": 3}]),
            b"\xc0",
        ]
    )


def test_split_at_every_offset():
    data = _stream()
    expected = decode(data)
    assert len(expected) == 9
    for offset in range(1, len(data)):
        conn = ForwardConnection()
        conn.receive_data(data[:offset])
        events = drain(conn)
        conn.receive_data(data[offset:])
        conn.receive_data(b"")
        events += drain(conn)
        assert events[:-1] == expected, offset
        assert isinstance(events[-1], EndOfStream)


def test_one_byte_at_a_time():
    data = _stream()
    conn = ForwardConnection()
    events = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        events += drain(conn)
        assert conn.buffered_bytes <= len(data)
    assert events == decode(data)
    assert conn.buffered_bytes == 0


def test_buffered_bytes_counts_a_partial_message():
    data = pack(["t", [[T0, REC]]])
    conn = ForwardConnection()
    conn.receive_data(data[:-3])
    assert drain(conn) == [] and conn.buffered_bytes == len(data) - 3
    conn.receive_data(data[-3:])
    assert len(drain(conn)) == 1 and conn.buffered_bytes == 0


# -- end of stream ---------------------------------------------------------------


def test_end_of_stream_between_messages():
    conn = ForwardConnection()
    conn.receive_data(pack(["t", T0, REC]))
    conn.receive_data(b"")
    events = drain(conn)
    assert isinstance(events[0], Message) and isinstance(events[1], EndOfStream)
    assert conn.state is State.CLOSED and isinstance(conn.next_event(), EndOfStream)


def test_end_of_stream_inside_a_message():
    data = pack(["t", [[T0, REC]]])
    conn = ForwardConnection()
    conn.receive_data(data[:-1])
    conn.receive_data(b"")
    with pytest.raises(errors.TruncatedMessage):
        drain(conn)


def test_data_after_end_of_stream():
    conn = ForwardConnection()
    conn.receive_data(b"")
    with pytest.raises(errors.ConnectionClosedError):
        conn.receive_data(b"\xc0")


# -- malformed framing -------------------------------------------------------------


@pytest.mark.parametrize(
    "data,error",
    [
        (pack({"tag": "t"}), errors.MalformedMessage),
        (pack(5), errors.MalformedMessage),
        (pack("PING"), errors.MalformedMessage),
        (pack(["t"]), errors.MalformedMessage),
        (pack(["t", T0, REC, {}, {}]), errors.MalformedMessage),
        (pack([5, T0, REC]), errors.MalformedMessage),
        (pack([None, [[T0, REC]]]), errors.MalformedMessage),
        (pack(["t", {"a": 1}]), errors.MalformedMessage),
        (pack(["t", None, REC]), errors.MalformedMessage),
        (pack(["t", True, REC]), errors.MalformedMessage),
        (pack(["t", T0]), errors.MalformedMessage),
        (pack(["t", [[T0, REC]], {}, {}]), errors.MalformedMessage),
        (pack(["t", [[T0, REC]], [1]]), errors.MalformedMessage),
        (pack(["t", [[T0, REC]], {"chunk": 7}]), errors.MalformedMessage),
        (b"\xc1", errors.InvalidMsgpack),
        (b"\x93\xa1t\x01\x81\x90\x01", errors.InvalidMsgpack),  # a map key that is an array
        (b"\x93\xa1t\xc7\x03\xffabc\x80", errors.InvalidMsgpack),  # a msgpack timestamp of 3 bytes
    ],
    ids=[
        "map",
        "int",
        "str",
        "one-item",
        "five-items",
        "tag-int",
        "tag-nil",
        "second-map",
        "second-nil",
        "second-bool",
        "message-without-record",
        "forward-four-items",
        "option-array",
        "chunk-int",
        "reserved-byte",
        "unhashable-key",
        "bad-timestamp",
    ],
)
def test_malformed(data, error):
    rejects(data, error)


def test_bin_tag_is_accepted():
    assert one(pack([b"llm.a", T0, REC])).tag == "llm.a"


# -- handshake ---------------------------------------------------------------------

NONCE = bytes(range(16))
AUTH_SALT = bytes(range(100, 116))
CLIENT_SALT = b"\xff\xfe" + bytes(14)  # not valid UTF-8, as Fluent Bit's is


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def secure(users: dict[str, str] | None = None, key: str = "secret") -> ForwardConnection:
    supplied = iter([NONCE, AUTH_SALT])
    return ForwardConnection(auth=AuthConfig(key, "receiver", users or {}), random_bytes=lambda n: next(supplied))


def ping(
    key: str = "secret",
    hostname: bytes = b"node-a",
    signed_hostname: bytes | None = None,
    username: bytes = b"",
    password: bytes | None = None,
    salt: bytes = CLIENT_SALT,
    nonce: bytes = NONCE,
) -> bytes:
    """A PING as Fluent Bit packs it: every field a msgpack str, the salt raw bytes."""
    digest = sha512_hex(salt, signed_hostname or hostname, nonce, key.encode()).encode()
    pw = b"" if password is None else sha512_hex(AUTH_SALT, username, password).encode()

    def s(b: bytes) -> bytes:
        return (bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b

    return b"\x96" + s(b"PING") + s(hostname) + s(salt) + s(digest) + s(username) + s(pw)


def test_helo_without_users():
    conn = secure()
    helo = conn.data_to_send()
    assert helo == pack(["HELO", {"nonce": NONCE, "auth": "", "keepalive": True}])
    assert conn.state is State.AWAITING_PING and conn.data_to_send() == b""


def test_helo_with_users_carries_the_auth_salt():
    assert secure({"alice": "pw"}).data_to_send() == pack(["HELO", {"nonce": NONCE, "auth": AUTH_SALT, "keepalive": True}])


def test_good_key():
    conn = secure()
    conn.data_to_send()
    conn.receive_data(ping())
    assert drain(conn) == [AuthSucceeded("node-a", "")]
    pong = msgpack.unpackb(conn.data_to_send())
    assert pong == ["PONG", True, "", "receiver", sha512_hex(CLIENT_SALT, b"receiver", NONCE, b"secret")]
    assert conn.state is State.OPEN and conn.peer_hostname == "node-a"


def test_ping_and_data_in_one_read():
    conn = secure()
    conn.receive_data(ping() + pack(["t", [[T0, REC]], {"chunk": "k"}]) + b"\xc0")
    events = drain(conn)
    assert isinstance(events[0], AuthSucceeded) and isinstance(events[1], Message) and events[2] == Heartbeat(1)


def test_ping_split_at_every_offset():
    data = ping() + pack(["t", T0, REC])
    for offset in range(1, len(data)):
        conn = secure()
        conn.receive_data(data[:offset])
        events = drain(conn)
        conn.receive_data(data[offset:])
        events += drain(conn)
        assert [type(e) for e in events] == [AuthSucceeded, Message], offset


def test_ping_with_bin_fields():
    salt = b"\x00\x01binary-salt"
    digest = sha512_hex(salt, b"node-a", NONCE, b"secret")
    conn = secure()
    conn.receive_data(pack(["PING", b"node-a", salt, digest.encode(), b"", b""]))
    assert drain(conn) == [AuthSucceeded("node-a", "")]


def _refused(conn: ForwardConnection, data: bytes, reason: str) -> AuthFailed:
    conn.data_to_send()
    conn.receive_data(data + pack(["t", [[T0, REC]], {"chunk": "never"}]))
    events = drain(conn)
    assert events[0] == AuthFailed(reason, events[0].hostname)
    assert events[1:] == [EndOfStream()]  # the data after a failed PING is never decoded
    assert msgpack.unpackb(conn.data_to_send()) == ["PONG", False, reason, "", ""]
    assert conn.state is State.CLOSED
    with pytest.raises(errors.ConnectionClosedError):
        conn.receive_data(b"\xc0")
    return events[0]


def test_bad_key():
    failed = _refused(secure(), ping(key="wrong"), "shared_key mismatch")
    assert failed.hostname == "node-a"


@pytest.mark.parametrize(
    "digest",
    [b"", b"0" * 128, b"zz" * 64, sha512_hex(CLIENT_SALT, b"node-a", NONCE, b"secret").upper().encode(), sha512_hex(CLIENT_SALT, b"node-a", NONCE, b"secret")[:-1].encode()],
    ids=["empty", "zeros", "not-hex", "uppercase", "short"],
)
def test_bad_digest(digest):
    data = pack(["PING", "node-a", CLIENT_SALT, digest, "", ""])
    _refused(secure(), data, "shared_key mismatch")


def test_wrong_nonce():
    _refused(secure(), ping(nonce=b"\x00" * 16), "shared_key mismatch")


def test_wrong_hostname():
    """The digest covers the client's hostname: a PING signed for another name does not verify."""
    _refused(secure(), ping(hostname=b"node-a", signed_hostname=b"node-b"), "shared_key mismatch")


def test_pong_is_signed_with_our_hostname_not_the_clients():
    conn = secure()
    conn.data_to_send()  # the HELO
    conn.receive_data(ping())
    drain(conn)
    digest = msgpack.unpackb(conn.data_to_send())[4]
    assert digest == sha512_hex(CLIENT_SALT, b"receiver", NONCE, b"secret")
    assert digest != sha512_hex(CLIENT_SALT, b"node-a", NONCE, b"secret")


@pytest.mark.parametrize(
    "first",
    [pack(["t", [[T0, REC]], {"chunk": "c"}]), pack(["t", T0, REC]), b"\xc0", pack(["HELO", {}]), pack(["PING", "node-a"]), pack([b"PING", "a", "b", "c", "", ""]), pack(["PING", 1, 2, 3, 4, 5])],
    ids=["forward", "message", "heartbeat", "helo", "short-ping", "bin-ping-word", "int-fields"],
)
def test_missing_ping(first):
    """Anything but a well-formed PING first is refused, and nothing in it is accepted."""
    _refused(secure(), first, "invalid ping message")


def test_users_good_password():
    conn = secure({"alice": "s3cret", "bob": "hunter2"})
    conn.receive_data(ping(username=b"bob", password=b"hunter2"))
    assert drain(conn) == [AuthSucceeded("node-a", "bob")]
    assert conn.peer_username == "bob"


@pytest.mark.parametrize(
    "username,password",
    [(b"alice", b"wrong"), (b"mallory", b"s3cret"), (b"", None), (b"alice", None)],
    ids=["wrong-password", "unknown-user", "no-user", "no-password"],
)
def test_users_refused(username, password):
    _refused(secure({"alice": "s3cret"}), ping(username=username, password=password), "username/password mismatch")


def test_users_password_digest_uses_our_auth_salt():
    conn = secure({"alice": "s3cret"})
    digest = sha512_hex(CLIENT_SALT, b"node-a", NONCE, b"secret")
    wrong_salt_pw = sha512_hex(b"\x00" * 16, b"alice", b"s3cret")
    _refused(conn, pack(["PING", "node-a", CLIENT_SALT, digest, "alice", wrong_salt_pw]), "username/password mismatch")


def test_without_users_any_username_is_accepted():
    conn = secure()
    conn.receive_data(ping(username=b"whoever", password=b"anything"))
    assert drain(conn) == [AuthSucceeded("node-a", "whoever")]


def test_auth_config_requires_key_and_hostname():
    with pytest.raises(ValueError):
        AuthConfig("", "receiver")
    with pytest.raises(ValueError):
        AuthConfig("secret", "")


# -- limits ----------------------------------------------------------------------


def test_largest_message_exactly_at_the_limit():
    data = pack(["t", [[T0, {"pad": "x" * 1000}]]])
    assert isinstance(one(data, Limits(max_message_bytes=len(data))), Message)
    rejects(data, errors.MessageTooLarge, Limits(max_message_bytes=len(data) - 1))


def test_oversized_message_is_refused_before_it_is_complete():
    """The core stops buffering once a message passes the limit, without waiting for its end."""
    limit = 64 * 1024
    header = b"\x92\xa1t\xdd" + struct.pack(">I", 1_000_000)  # announces a million entries
    entry = pack([T0, {"pad": "x" * 100}])
    conn = ForwardConnection(limits=Limits(max_message_bytes=limit))
    conn.receive_data(header)
    sent = len(header)
    with pytest.raises(errors.MessageTooLarge):
        while True:
            conn.receive_data(entry)
            sent += len(entry)
            assert drain(conn) == []
            assert conn.buffered_bytes <= limit + len(entry)
    assert sent <= limit + 2 * len(entry)


def test_announced_huge_string_is_refused_at_its_header():
    """A str32 header announcing 4 GiB is refused from its 5 bytes, before any body is buffered."""
    conn = ForwardConnection(limits=Limits(max_message_bytes=4096))
    with pytest.raises(errors.ContainerTooLarge):
        conn.receive_data(b"\x92\xa1t\xdb\xff\xff\xff\xff")
        drain(conn)
    assert conn.state is State.CLOSED


def test_string_past_the_message_limit_is_refused_at_its_header():
    """Within ``max_str_bytes`` but ending past ``max_message_bytes``: refused before the body arrives."""
    conn = ForwardConnection(limits=Limits(max_message_bytes=4096, max_str_bytes=8192))
    with pytest.raises(errors.MessageTooLarge):
        conn.receive_data(b"\x92\xa1t\xda\x17\x70")  # bin/str16 of 6000 bytes
        drain(conn)


def test_announced_lengths_within_the_limits_wait_for_the_body():
    """A header within every limit is no reason to refuse: the message is delivered once whole."""
    body = b"x" * 3000
    data = pack(["t", 1, {"log": body.decode()}])
    conn = ForwardConnection(limits=Limits(max_message_bytes=4096))
    conn.receive_data(data[:10])
    assert drain(conn) == []
    conn.receive_data(data[10:])
    (message,) = drain(conn)
    assert message.entries[0].record == {"log": body.decode()}


@pytest.mark.parametrize("header", [
    b"\xdd\x7f\xff\xff\xff",  # array32
    b"\x93\xa1t\xdf\x7f\xff\xff\xff",  # map32 as the record's place
    b"\x92\xa1t\xc9\x00\x01\x00\x00",  # ext32 of 64 KiB
    b"\x92\xa1t\xc6\xff\xff\xff\xff",  # bin32
])
def test_every_kind_of_declared_length_is_refused_at_its_header(header):
    conn = ForwardConnection()
    with pytest.raises(errors.ContainerTooLarge):
        conn.receive_data(header)
        drain(conn)


def test_decompressed_size_limit_is_exact():
    raw = _packed(10)
    data = pack(["t", gzip.compress(raw), {"compressed": "gzip"}])
    assert len(one(data, Limits(max_decompressed_bytes=len(raw))).entries) == 10
    rejects(data, errors.DecompressedTooLarge, Limits(max_decompressed_bytes=len(raw) - 1))


def test_decompressed_limit_counts_all_members():
    raw = _packed(10)
    data = pack(["t", gzip.compress(raw) + gzip.compress(raw), {"compressed": "gzip"}])
    rejects(data, errors.DecompressedTooLarge, Limits(max_decompressed_bytes=len(raw) + len(raw) // 2))


def test_gzip_bomb_stops_at_the_limit():
    """64 MiB of zeros in a 64 KiB gzip: decompression stops at the 1 MiB limit, memory stays near it."""
    bomb = gzip.compress(b"\0" * (64 << 20), 9)
    assert len(bomb) < 100_000
    data = pack(["t", bomb, {"compressed": "gzip"}])
    limit = 1 << 20
    tracemalloc.start()
    try:
        rejects(data, errors.DecompressedTooLarge, Limits(max_decompressed_bytes=limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit + 4 * len(data)


@pytest.mark.parametrize(
    "data,limits",
    [
        (pack(["t", T0, {"s": "x" * 101}]), Limits(max_str_bytes=100)),
        (pack(["t", T0, {"b": b"x" * 101}]), Limits(max_str_bytes=100)),
        (pack(["t", T0, {"a": list(range(11))}]), Limits(max_array_len=10)),
        (pack(["t", T0, {str(i): i for i in range(11)}]), Limits(max_map_len=10)),
        (pack(["t", T0, {"e": msgpack.ExtType(1, b"x" * 65)}]), Limits()),
        (pack(["t", b"".join(pack([T0, {}]) for _ in range(11))]), Limits(max_array_len=10)),
        (pack(["t", gzip.compress(b"".join(pack([T0, {}]) for _ in range(11))), {"compressed": "gzip"}]), Limits(max_array_len=10)),
        (pack(["t", pack([T0, {"s": "x" * 101}])]), Limits(max_str_bytes=100)),
    ],
    ids=["str", "bin", "array", "map", "ext", "packed-entries", "compressed-entries", "str-in-packed"],
)
def test_container_limits(data, limits):
    rejects(data, errors.ContainerTooLarge, limits)


def test_container_limits_are_inclusive():
    limits = Limits(max_str_bytes=100, max_array_len=10, max_map_len=10)
    record = {"s": "x" * 100, "a": list(range(10)), **{str(i): i for i in range(8)}}
    assert one(pack(["t", T0, record]), limits).entries[0].record == record


def test_nesting_limit():
    deep = b"\x93\xa1t\x01" + b"\x81\xa1k" * 5000 + b"\xc0"
    rejects(deep, errors.NestingTooDeep)
    shallow = b"\x93\xa1t\x01" + b"\x81\xa1k" * 100 + b"\xc0"
    assert isinstance(one(shallow), Message)


def test_nesting_limit_inside_packed_payload():
    inner = b"\x92\x01" + b"\x91" * 5000 + b"\xc0"
    rejects(pack(["t", inner]), errors.NestingTooDeep)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Limits)])
def test_limits_must_be_positive(field):
    for bad in (0, -1, True, "1"):
        with pytest.raises(ValueError, match=field):
            Limits(**{field: bad})


def test_every_error_reason_is_declared():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ForwardError)]
    assert len(classes) >= 13
    assert {c.reason for c in classes} == set(errors.REASONS)
    assert all(re.fullmatch(r"[a-z_]+", r) for r in errors.REASONS)


# -- docs/forward.md ------------------------------------------------------------------


def _doc_default(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def test_doc_lists_every_limit_with_its_default():
    """docs/forward.md's limits table is kept in sync with qwen_fluent/forward/limits.py."""
    text = DOC.read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", text, re.M))
    for field in dataclasses.fields(Limits):
        assert field.name in rows, f"docs/forward.md does not list Limits.{field.name}"
        assert rows[field.name] == _doc_default(field.default), f"docs/forward.md has the wrong default for {field.name}"


def test_doc_lists_every_error_reason():
    text = DOC.read_text()
    for reason in errors.REASONS:
        assert f"`{reason}`" in text, f"docs/forward.md does not explain reason {reason}"


def test_large_and_small_messages_in_any_split_after_the_buffer_is_renewed():
    """After a message over 1 MiB the connection starts a new msgpack buffer; offsets and sizes stay exact."""
    big = pack(["t", [[T0, {"log": "x" * (1_300_000 + i)}] for i in range(2)]])
    small = pack(["t", T0, REC])
    stream = big + small + small + big + small
    for step in (1 << 20, 100_003, 262_144 * 3 + 7):
        conn = ForwardConnection()
        events = []
        for i in range(0, len(stream), step):
            conn.receive_data(stream[i:i + step])
            events += drain(conn)
        conn.receive_data(b"")
        events += drain(conn)
        assert [e.nbytes for e in events[:-1]] == [len(big), len(small), len(small), len(big), len(small)]
        assert isinstance(events[-1], EndOfStream)


# -- zstd (Fluentd 1.19 `compress zstd`) -----------------------------------------


def _zstd(data: bytes, level: int = 3) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=level).compress(data)


def test_zstd_payload_in_several_frames():
    """Frames are read one after another, and an entry may span two, as with gzip members."""
    raw = _packed(10)
    cut = len(raw) // 2 + 3
    message = one(pack(["t", _zstd(raw[:cut]) + _zstd(raw[cut:]), {"compressed": "zstd", "chunk": "z"}]))
    assert message.mode is Mode.COMPRESSED_PACKED_FORWARD and message.chunk == "z"
    assert [e.record["i"] for e in message.entries] == list(range(10))


def test_zstd_limit_is_exact_and_counts_every_frame():
    raw = _packed(10)
    data = pack(["t", _zstd(raw), {"compressed": "zstd"}])
    assert len(one(data, Limits(max_decompressed_bytes=len(raw))).entries) == 10
    rejects(data, errors.DecompressedTooLarge, Limits(max_decompressed_bytes=len(raw) - 1))
    two = pack(["t", _zstd(raw) + _zstd(raw), {"compressed": "zstd"}])
    rejects(two, errors.DecompressedTooLarge, Limits(max_decompressed_bytes=len(raw) + len(raw) // 2))


@pytest.mark.parametrize("payload", [b"not zstd at all", b"", "truncated"], ids=["garbage", "empty", "truncated"])
def test_bad_zstd_is_bad_compression(payload):
    if payload == "truncated":
        payload = _zstd(_packed(50))[:-5]
    rejects(pack(["t", payload, {"compressed": "zstd"}]), errors.BadCompression)


def test_zstd_bomb_stops_at_the_limit():
    """256 MiB of zeros in an 8 KiB zstd frame: decompression stops near the 1 MiB limit, memory too."""
    bomb = _zstd(b"\0" * (256 << 20), 19)
    assert len(bomb) < 20_000
    data = pack(["t", bomb, {"compressed": "zstd"}])
    limit = 1 << 20
    tracemalloc.start()
    try:
        rejects(data, errors.DecompressedTooLarge, Limits(max_decompressed_bytes=limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit + 4 * len(data)


def test_an_unknown_codec_is_still_refused():
    rejects(pack(["t", _packed(1), {"compressed": "lz4"}]), errors.BadCompression, match="gzip and zstd")
