"""Property-based attack on the Forward core: arbitrary and mutated byte streams, in random splits.

Whatever comes in, the core must either produce well-typed events or raise a
:class:`~qwen_fluent.forward.ForwardError` subclass (the documented protocol
errors) — never another exception, never a hang, and never hold more than its
limits allow. Seeds are the real Fluent Bit 4.2.8 captures (tests/vectors),
including the secure-forward handshakes, plus a stream of every mode.

Kept fast for CI (2 cores): small inputs, a few hundred examples per property.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import signal
import struct
import tracemalloc
from typing import Any, Iterator

import msgpack
import zstandard
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_fluent.forward import errors
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
from qwen_fluent.forward.decode import INVALID_ENTRY, INVALID_RECORD, INVALID_TIME
from qwen_fluent.forward.errors import REASONS

from .vectors import SERVER_HOSTNAME, USERS, Capture, all_captures

# Small limits, so that random input reaches them often and memory stays tiny.
LIMITS = Limits(
    max_message_bytes=64 * 1024,
    max_decompressed_bytes=256 * 1024,
    max_str_bytes=16 * 1024,
    max_array_len=4096,
    max_map_len=512,
)

FUZZ = settings(
    # QWEN_FLUENT_FUZZ_EXAMPLES=20000 for a long run by hand; CI keeps the default of a few seconds.
    max_examples=int(os.environ.get("QWEN_FLUENT_FUZZ_EXAMPLES", "300")),
    deadline=None,  # the alarm below catches a hang; wall-clock deadlines flake on a shared 2-core box
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

#: Seconds one example may take before it counts as a hang (a normal one takes milliseconds).
HANG_SECONDS = 10

CAPTURES = all_captures()
T0 = 1_700_000_000


def _et(sec: int, nsec: int = 0) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _every_mode() -> bytes:
    rec = {"request_id": "r1", "status": "success"}
    entries = b"".join(_pack([_et(T0, i), rec]) for i in range(3))
    return b"".join(
        [
            _pack(["t", _et(T0), rec, {"chunk": "a"}]),
            b"\xc0",
            _pack(["t", [[T0, rec], [[_et(T0), {"m": 1}], rec]], {"size": 2}]),
            _pack(["t", entries, {"chunk": "b"}]),
            _pack(["t", gzip.compress(entries[:9]) + gzip.compress(entries[9:]), {"compressed": "gzip"}]),
            _pack(["m", b"\x00\x01", {"fluent_signal": 1, "size": 2}]),
        ]
    )


SEEDS: list[tuple[str, bytes]] = [(f"{c.case}/{c.name}", c.client) for c in CAPTURES] + [("every_mode", _every_mode())]
BY_NAME = {c.case + "/" + c.name: c for c in CAPTURES}


def _connection(seed: str) -> ForwardConnection:
    """A core configured as the capture server was (its HELO nonce and salt), so a PING can verify."""
    capture: Capture | None = BY_NAME.get(seed)
    if capture is None or not capture.case.startswith("shared_key"):
        return ForwardConnection(limits=LIMITS)
    helo = capture.server_objects()[0]
    nonce = helo[1][b"nonce"]
    salt = helo[1].get(b"auth", b"") or b"\0" * 16
    supplied = iter([nonce, salt])
    users = USERS if capture.case == "shared_key_userauth" else {}
    auth = AuthConfig(capture.shared_key, SERVER_HOSTNAME, users)
    return ForwardConnection(auth=auth, limits=LIMITS, random_bytes=lambda n: next(supplied))


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    def fire(signum, frame):
        raise AssertionError(f"the core spent more than {seconds} s on one input: a hang")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_event(conn: ForwardConnection, event: Any) -> None:
    """Every event is one of the documented types, with well-typed fields."""
    if isinstance(event, Message):
        assert isinstance(event.tag, str) and isinstance(event.mode, Mode)
        assert event.nbytes > 0 and isinstance(event.options, dict)
        assert set(event.invalid) <= {INVALID_ENTRY, INVALID_TIME, INVALID_RECORD}
        assert all(type(n) is int and n > 0 for n in event.invalid.values())
        for entry in event.entries:
            assert type(entry) is Entry
            assert type(entry.time) in (int, float) and type(entry.record) is dict
            assert entry.metadata is None or type(entry.metadata) is dict
        assert event.chunk is None or isinstance(event.chunk, str)
        ack = conn.ack(event)
        assert (ack == b"") == (event.chunk is None)
        if ack:
            assert msgpack.unpackb(ack, raw=True) == {b"ack": event.chunk.encode("utf-8", "surrogateescape")}
    elif isinstance(event, SkippedMessage):
        assert event.signal != 0 and event.count >= 1 and event.nbytes > 0
        conn.ack(event)
    elif isinstance(event, Heartbeat):
        assert event.nbytes == 1
    elif isinstance(event, (AuthSucceeded, AuthFailed)):
        assert isinstance(event.hostname, str)
    else:
        raise AssertionError(f"unexpected event {event!r}")


def run_stream(conn: ForwardConnection, pieces: list[bytes]) -> tuple[list[Any], ForwardError | None]:
    """Feed ``pieces`` then end of stream; return the events and the protocol error, if one ended it."""
    events: list[Any] = []
    total = sum(len(p) for p in pieces)
    limits = conn.limits
    try:
        with no_hang():
            for piece in [*pieces, b""]:
                if conn.state is State.CLOSED:
                    break
                conn.receive_data(piece)
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA:
                        # between reads the core holds at most one message's worth of bytes
                        assert conn.buffered_bytes <= limits.max_message_bytes
                        break
                    if isinstance(event, EndOfStream):
                        assert conn.state is State.CLOSED
                        break
                    _check_event(conn, event)
                    events.append(event)
                    # every event consumes at least one byte: no loop can spin without input
                    assert len(events) <= total
                    conn.data_to_send()
    except ForwardError as error:
        assert error.reason in REASONS
        assert conn.state is State.CLOSED
        assert isinstance(conn.next_event(), EndOfStream)
        return events, error
    assert conn.state is State.CLOSED  # end of stream closes it
    return events, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


# -- strategies ------------------------------------------------------------------


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    """A seed with a few random edits: flips, insertions, deletions, duplications, splices, truncation."""
    name, data = draw(st.sampled_from(SEEDS))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "splice", "truncate", "interesting"]))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 32))]
        elif op == "dup":
            n = draw(st.integers(1, 64))
            buf[pos:pos] = buf[pos : pos + n]
        elif op == "splice":
            _, other = draw(st.sampled_from(SEEDS))
            start = draw(st.integers(0, len(other)))
            buf[pos:pos] = other[start : start + draw(st.integers(1, 200))]
        elif op == "truncate":
            del buf[pos:]
        elif op == "interesting" and buf:
            # msgpack headers that announce big or odd things
            buf[pos : pos + 1] = draw(
                st.sampled_from([b"\xdd\xff\xff\xff\xff", b"\xdf\x00\x01\x00\x00", b"\xdb\x7f\xff\xff\xff", b"\xc6\x00\x10\x00\x00", b"\xc1", b"\xc0", b"\xd7\x00", b"\xc7\x08\xff", b"\x91" * 40])
            )
    return name, bytes(buf)


# msgpack values for structured fuzzing: the types that appear in records, options and times.
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.builds(_et, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=10)),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
TIMES = st.one_of(
    st.integers(0, 2**33),
    st.floats(0, 2**33),
    st.builds(_et, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1)),
    # Fluent Bit's group markers: EventTime seconds -1 and -2 as int32
    st.builds(_et, st.sampled_from([2**32 - 1, 2**32 - 2]), st.integers(0, 10**9 - 1)),
    st.builds(lambda t, m: [t, m], st.builds(_et, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1)), st.dictionaries(st.text(max_size=5), LEAVES, max_size=3)),
    VALUES,
)
RECORDS = st.one_of(st.dictionaries(st.text(max_size=8), VALUES, max_size=6), VALUES)
ENTRIES = st.lists(st.one_of(st.tuples(TIMES, RECORDS).map(list), VALUES), max_size=8)
OPTIONS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "chunk": st.one_of(st.text(max_size=24), st.binary(max_size=24), VALUES),
            "size": st.one_of(st.integers(-5, 2**40), VALUES),
            "compressed": st.sampled_from(["gzip", "text", "zstd", 1]),
            "fluent_signal": st.one_of(st.integers(0, 3), st.sampled_from(["0", "1", "2", "x"]), VALUES),
            "metadata": st.one_of(st.dictionaries(st.text(max_size=4), LEAVES, max_size=2), VALUES),
        },
    ),
)


@st.composite
def forward_messages(draw) -> tuple[bytes, int | None]:
    """A Forward-shaped message with random content; returns (bytes, number of items if known)."""
    tag = draw(st.one_of(st.text(max_size=10), st.binary(max_size=10), VALUES))
    form = draw(st.sampled_from(["message", "forward", "packed", "compressed"]))
    options = draw(OPTIONS)
    if form == "message":
        obj = [tag, draw(TIMES), draw(RECORDS)]
        count = 1
    else:
        items = draw(ENTRIES)
        count = len(items)
        if form == "forward":
            obj = [tag, items]
        else:
            raw = b"".join(_pack(i) for i in items)
            if form == "compressed":
                if not isinstance(options, dict):
                    options = {}
                codec = draw(st.sampled_from(["gzip", "zstd"]))
                options["compressed"] = codec
                members = draw(st.integers(1, 3))
                step = max(1, math.ceil(len(raw) / members))
                compress = gzip.compress if codec == "gzip" else zstandard.ZstdCompressor().compress
                raw = b"".join(compress(raw[i : i + step]) for i in range(0, len(raw), step)) or compress(b"")
            obj = [tag, raw]
    if options is not None or draw(st.booleans()):
        obj.append(options)
    return _pack(obj), count


# -- properties --------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=8))
def test_arbitrary_bytes(data, cuts):
    run_stream(ForwardConnection(limits=LIMITS), _split(data, cuts))


@FUZZ
@given(data=st.binary(max_size=2048), cuts=st.lists(st.integers(0, 2048), max_size=4))
def test_arbitrary_bytes_before_a_handshake(data, cuts):
    """With auth on, nothing is accepted unless the first object is a PING that verifies."""
    conn = ForwardConnection(auth=AuthConfig("secret", "receiver", {"alice": "pw"}), limits=LIMITS)
    events, _ = run_stream(conn, _split(data, cuts))
    assert not any(isinstance(e, (Message, SkippedMessage, Heartbeat)) for e in events)


@FUZZ
@given(seed=mutated(), cuts=st.lists(st.integers(0, 8192), max_size=8))
def test_mutated_captures(seed, cuts):
    name, data = seed
    events, _ = run_stream(_connection(name), _split(data, cuts))
    if any(isinstance(e, AuthFailed) for e in events):
        assert isinstance(events[-1], AuthFailed)  # nothing after a refused PING
    if any(isinstance(e, AuthSucceeded) for e in events):
        assert isinstance(events[0], AuthSucceeded)  # nothing accepted before the PING verified


@FUZZ
@given(seed=st.sampled_from(SEEDS), cuts=st.lists(st.integers(0, 4096), max_size=12))
def test_captures_in_random_splits_decode_the_same(seed, cuts):
    """How the bytes are cut into reads never changes what is decoded."""
    name, data = seed
    whole = run_stream(_connection(name), [data])
    split = run_stream(_connection(name), _split(data, cuts))
    assert split[0] == whole[0]
    assert type(split[1]) is type(whole[1])


@FUZZ
@given(message=forward_messages(), cuts=st.lists(st.integers(0, 1024), max_size=4))
def test_structured_messages_count_every_item(message, cuts):
    """A message that is accepted accounts for every item: decoded, or counted invalid by reason."""
    data, count = message
    events, error = run_stream(ForwardConnection(limits=LIMITS), _split(data, cuts))
    if error is None:
        (event,) = events
        if isinstance(event, Message):
            # Garbage can be ambiguous ([tag, [x, {}], {}] is a Message whose time has metadata, or a
            # Forward message of two bad entries): count by the mode the core chose.
            second = msgpack.unpackb(data, strict_map_key=False)[1]
            if event.mode is Mode.MESSAGE:
                count = 1
            elif event.mode is Mode.FORWARD:
                count = len(second)
            assert len(event.entries) + sum(event.invalid.values()) + event.group_markers == count


# -- memory ------------------------------------------------------------------------


def _peak(data: bytes, limits: Limits) -> tuple[int, ForwardError | None]:
    conn = ForwardConnection(limits=limits)
    tracemalloc.start()
    try:
        _, error = run_stream(conn, [data])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, error


#: Decoding turns bytes into Python objects; the worst case is one-byte containers (an empty
#: map is 1 byte on the wire and a 64-byte dict plus an 8-byte slot in memory). docs/forward.md
#: documents this factor; the test below holds the core to it.
AMPLIFICATION = 100


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_decoded_memory_is_bounded_by_the_limits(compressed):
    """The most memory-hungry message the limits allow costs at most AMPLIFICATION x its bytes."""
    n = (1 << 20) - 64
    # max_objects would stop this message first; raised here so the byte limits alone are tested
    limits = Limits(
        max_message_bytes=1 << 20, max_decompressed_bytes=1 << 20, max_array_len=1 << 20, max_objects=n + 10
    )
    # one entry whose record holds one array of as many empty maps as fit
    entry = b"\x92\x00\x81\xa1a\xdd" + struct.pack(">I", n) + b"\x80" * n
    if compressed:
        data = _pack(["t", gzip.compress(entry, 9), {"compressed": "gzip"}])
        budget = limits.max_decompressed_bytes
        assert len(data) < 10_000  # a few KB on the wire ...
    else:
        data = _pack(["t", entry])
        budget = limits.max_message_bytes
    peak, error = _peak(data, limits)
    assert error is None
    assert peak <= AMPLIFICATION * budget  # ... is bounded by the limit, not by the wire size


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_object_budget_stops_container_bombs_early(compressed):
    """With max_objects, a message of empty containers is refused before it costs 75x its size."""
    limits = Limits(max_message_bytes=1 << 20, max_decompressed_bytes=1 << 20, max_array_len=1 << 20, max_objects=10_000)
    n = (1 << 20) - 64
    entry = b"\x92\x00\x81\xa1a\xdd" + struct.pack(">I", n) + b"\x80" * n
    data = _pack(["t", gzip.compress(entry, 9), {"compressed": "gzip"}]) if compressed else _pack(["t", entry])
    peak, error = _peak(data, limits)
    assert isinstance(error, errors.TooManyObjects)
    # the bytes themselves (1 MiB buffered or decompressed) plus at most 10k small objects
    assert peak <= 4 * (1 << 20)


def test_short_strings_cost_at_most_twenty_times_their_size():
    """The worst non-container case documented in docs/forward.md: 2-character strings."""
    limits = Limits(max_message_bytes=1 << 20, max_decompressed_bytes=1 << 20)
    n = ((1 << 20) - 64) // 3
    entry = b"\x92\x00\x81\xa1a\xdd" + struct.pack(">I", n) + b"\xa2ab" * n
    peak, error = _peak(_pack(["t", gzip.compress(entry, 9), {"compressed": "gzip"}]), limits)
    assert error is None
    assert peak <= 25 * limits.max_decompressed_bytes


# -- direct framing ------------------------------------------------------------------


def _general(conn: ForwardConnection) -> ForwardConnection:
    conn.direct_framing = False  # every message through msgpack's stream: the reference
    return conn


@FUZZ
@given(messages=st.lists(forward_messages(), min_size=1, max_size=4), cuts=st.lists(st.integers(0, 4096), max_size=8),
       flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=2))
def test_direct_framing_reads_what_the_stream_reads(messages, cuts, flips):
    """PackedForward messages framed straight from the pending bytes (``ForwardConnection._direct``) give
    the same events and the same error as msgpack's stream, for any messages, bytes flipped, in any split."""
    data = bytearray(b"".join(m for m, _ in messages))
    for at, value in flips:
        data[at % len(data)] = value
    pieces = _split(bytes(data), cuts)
    direct = run_stream(ForwardConnection(limits=LIMITS, defer_packed=True), pieces)
    general = run_stream(_general(ForwardConnection(limits=LIMITS, defer_packed=True)), pieces)
    assert direct[0] == general[0]
    assert type(direct[1]) is type(general[1])


@FUZZ
@given(seed=st.sampled_from(SEEDS), cuts=st.lists(st.integers(0, 4096), max_size=12))
def test_direct_framing_reads_the_captures_as_the_stream_does(seed, cuts):
    name, data = seed
    direct = run_stream(_connection(name), _split(data, cuts))
    general = run_stream(_general(_connection(name)), _split(data, cuts))
    assert direct[0] == general[0]
    assert type(direct[1]) is type(general[1])
