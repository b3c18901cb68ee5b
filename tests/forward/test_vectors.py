"""Golden tests: every Fluent Bit 4.2.8 capture decodes to exactly the records in its dump,
and every reply our core builds is byte for byte what Fluent Bit accepted."""

from __future__ import annotations

import msgpack
import pytest

from qwen_fluent.forward import (
    NEED_DATA,
    AuthConfig,
    AuthFailed,
    AuthSucceeded,
    EndOfStream,
    ForwardConnection,
    Message,
)

from .vectors import DUMP_MODES, SERVER_HOSTNAME, USERS, Capture, all_captures, cases

CAPTURES = all_captures()


def _ids(c: Capture) -> str:
    return f"{c.case}/{c.name}"


def _connection_for(capture: Capture) -> ForwardConnection:
    """A core configured as the capture server was, replaying its HELO nonce and salt."""
    if not capture.case.startswith("shared_key"):
        return ForwardConnection()
    helo = capture.server_objects()[0]
    assert helo[0] == b"HELO"
    nonce = helo[1][b"nonce"]
    auth_salt = helo[1].get(b"auth", b"") or b"\0" * 16
    supplied = iter([nonce, auth_salt])
    users = USERS if capture.case == "shared_key_userauth" else {}
    return ForwardConnection(
        auth=AuthConfig(capture.shared_key, SERVER_HOSTNAME, users), random_bytes=lambda n: next(supplied)
    )


def _drain(conn: ForwardConnection) -> list:
    events = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or isinstance(event, EndOfStream):
            return events
        events.append(event)


def test_every_case_is_covered():
    # The shared folder holds 19 configurations (plus _k8s-inputs); all of them must be exercised here.
    assert len(cases()) == 19
    assert len(CAPTURES) >= 40


@pytest.mark.parametrize("capture", CAPTURES, ids=_ids)
def test_capture_decodes_to_its_dump(capture: Capture):
    conn = _connection_for(capture)
    conn.receive_data(capture.client)
    conn.receive_data(b"")
    events = _drain(conn)
    expected = [o for o in capture.objects if o.mode != "PING"]
    messages = [e for e in events if isinstance(e, Message)]
    if capture.case == "shared_key_wrong":
        assert messages == [] and isinstance(events[0], AuthFailed)
        return
    assert len(messages) == len(expected)
    for got, want in zip(messages, expected):
        assert got.mode.value == DUMP_MODES[want.mode]
        assert got.invalid == {}
        assert len(got.entries) == len(want.entries)
        for entry, dumped in zip(got.entries, want.entries):
            assert entry.record == dumped.record
            assert entry.time == pytest.approx(dumped.sec + dumped.nsec / 1e9, abs=1e-6)
            assert entry.metadata == dumped.metadata


@pytest.mark.parametrize("capture", [c for c in CAPTURES if c.case.startswith("shared_key")], ids=_ids)
def test_handshake_replies_match_capture(capture: Capture):
    conn = _connection_for(capture)
    helo = conn.data_to_send()
    ours = msgpack.unpackb(helo, raw=True)
    theirs = capture.server_objects()[0]
    assert ours[0] == b"HELO" and ours[1][b"nonce"] == theirs[1][b"nonce"]
    assert ours[1][b"keepalive"] is True
    conn.receive_data(capture.client)
    events = _drain(conn)
    first = msgpack.Unpacker(raw=True)
    first.feed(capture.server)
    first.unpack()
    captured_pong = capture.server[first.tell() :]
    if capture.case == "shared_key_wrong":
        assert isinstance(events[0], AuthFailed) and events[0].reason == "shared_key mismatch"
    else:
        assert isinstance(events[0], AuthSucceeded) and events[0].hostname == "node-a"
        if capture.case == "shared_key_userauth":
            assert events[0].username == "alice"
    assert conn.data_to_send() == captured_pong


@pytest.mark.parametrize("capture", [c for c in CAPTURES if c.server and not c.case.startswith("shared_key")], ids=_ids)
def test_acks_match_capture(capture: Capture):
    """Every ack the capture server sent (and Fluent Bit accepted) is the ack our core builds."""
    conn = _connection_for(capture)
    conn.receive_data(capture.client)
    messages = [e for e in _drain(conn) if isinstance(e, Message)]
    # The capture server withheld the ack for messages its policy closed on.
    policies = [e["policy"] for e in capture.events if e["event"] == "ack_decision"]
    assert len(policies) == len(messages)
    ours = b"".join(conn.ack(m) for m, policy in zip(messages, policies) if policy == "normal")
    assert ours == capture.server
    for raw in capture.server_objects():
        # both key and chunk id are msgpack str (0xa0-0xbf fixstr), never bin
        assert set(raw) == {b"ack"}
    assert b"\xc4" not in capture.server[:2]


def test_retried_chunk_has_same_id_and_bytes():
    """Fluent Bit retries a chunk with the same id: the receiver sees it twice and acks both."""
    first, _, third = [c for c in CAPTURES if c.case == "retry_ack_close"]
    assert first.client == third.client
    conn = ForwardConnection()
    conn.receive_data(third.client)
    (message,) = _drain(conn)
    assert message.chunk == "22ByBNVt65/z2DiMrRak5Q=="
    assert conn.ack(message) == msgpack.packb({"ack": "22ByBNVt65/z2DiMrRak5Q=="}, use_bin_type=True)


@pytest.mark.parametrize("capture", CAPTURES[:: max(1, len(CAPTURES) // 12)], ids=_ids)
def test_capture_split_at_every_offset(capture: Capture):
    """Fluent Bit writes header, entries and options separately: any split must decode the same."""
    whole = _connection_for(capture)
    whole.receive_data(capture.client)
    expected = _drain(whole)
    for offset in range(1, len(capture.client)):
        conn = _connection_for(capture)
        conn.receive_data(capture.client[:offset])
        events = _drain(conn)
        conn.receive_data(capture.client[offset:])
        events += _drain(conn)
        assert events == expected, offset
