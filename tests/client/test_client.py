"""The Forward client against the real receiver (``qwen_fluent.app.Receiver`` on loopback, read through /metrics).

Every mode with and without acks, gzip, the shared-key handshake (right key,
wrong key, users, a PONG signed with the wrong key), TLS, and the recovery
paths against real sockets: a lost ack makes the sender resend the same bytes
on a new connection (and the receiver, which does not deduplicate yet, counts
those records twice), a peer that never acks exhausts the bounded retries,
and ``close()`` from another thread stops a blocked send.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from pathlib import Path

import msgpack
import pytest

from qwen_fluent.client import (
    AckTimeout,
    ClientHandshake,
    DeliveryFailed,
    ForwardSender,
    HandshakeError,
    HandshakeRefused,
    Mode,
    SenderClosed,
    TLSFailed,
    UnexpectedReply,
    ack_of,
    build,
    chunk_id,
    event_time,
    tls_context,
)
from qwen_fluent.forward import AuthConfig, ForwardConnection, Message

from .conftest import receiver_from_toml, scrape, total, wait_total
from .peers import DroppingProxy, SilentPeer

T0 = 1_733_500_000.25


def request(i: int, status: str = "success") -> dict:
    return {"request_id": f"req-{i}", "method": "POST", "path": "/v1/chat/completions", "input_tokens": 100 + i,
            "output_tokens": 10 + i, "total_time_ms": 500 + i, "queue_time_ms": 20, "inference_time_ms": 480 + i,
            "status": status, "model": "qwen2.5-7b"}


def events(n: int, start: int = 0) -> list[tuple[float, dict]]:
    return [(T0 + i * 0.001, request(start + i)) for i in range(n)]


# -- without I/O: the bytes, read back by the receiver's own protocol core --------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_built_messages_decode_in_the_receivers_core_with_times_records_and_chunk(mode: Mode) -> None:
    sent = events(5)
    chunks = build("llm.inference", sent, mode)
    assert len(chunks) == (5 if mode is Mode.MESSAGE else 1)
    assert sum(c.records for c in chunks) == 5 and len({c.chunk for c in chunks}) == len(chunks)
    conn = ForwardConnection()
    got = []
    for c in chunks:
        conn.receive_data(c.data)
        message = conn.next_event()
        assert isinstance(message, Message) and message.mode is mode and message.chunk == c.chunk
        assert message.tag == "llm.inference" and message.options["size"] == c.records
        got += [(e.time, e.record) for e in message.entries]
    assert [r for _, r in got] == [r for _, r in sent]
    assert all(abs(t - want) < 1e-6 for (t, _), (want, _) in zip(got, sent))


def test_gzip_payload_is_gzip_and_without_ack_there_is_no_chunk_id() -> None:
    [c] = build("t", events(3), Mode.COMPRESSED_PACKED_FORWARD, ack=False)
    tag, payload, option = msgpack.unpackb(c.data)
    assert option == {"size": 3, "compressed": "gzip"} and c.chunk is None
    assert len(list(msgpack.Unpacker(__import__("io").BytesIO(gzip.decompress(payload))))) == 3
    sent = events(4)
    [c] = build("t", sent, Mode.FORWARD)  # built from the packed entries: the same bytes as packing it whole
    tag, entries, option = msgpack.unpackb(c.data)
    assert c.data == msgpack.packb(["t", [[event_time(t), r] for t, r in sent], option], use_bin_type=True)
    [c] = build("t", events(2), Mode.FORWARD, time_as_integer=True)
    assert [e[0] for e in msgpack.unpackb(c.data)[1]] == [int(T0), int(T0)]
    assert build("t", [], Mode.FORWARD) == []


VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "fluent-bit-4.2.8"


def _entries_and_chunk(data: bytes) -> list[tuple[bytes, str]]:
    """(the entries' bytes as on the wire, gunzipped; the chunk option) of every message of a capture."""
    out = []
    unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
    unpacker.feed(data)
    while True:
        try:
            start = unpacker.tell()
            message = unpacker.unpack()
        except msgpack.OutOfData:
            return out
        end = unpacker.tell()
        if not (isinstance(message, list) and len(message) == 3 and "chunk" in message[2]):
            continue
        if isinstance(message[1], bytes):  # (Compressed)PackedForward: the payload is the entries
            entries = message[1]
            if message[2].get("compressed") == "gzip":
                entries = gzip.decompress(entries)
        else:  # Forward: the bytes of the entries array's items
            inner = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
            inner.feed(data[start:end])
            inner.read_array_header()
            inner.skip()
            n = inner.read_array_header()
            first = inner.tell()
            for _ in range(n):
                inner.skip()
            entries = data[start + first:start + inner.tell()]
        out.append((entries, message[2]["chunk"]))


def test_chunk_ids_are_made_as_fluent_bit_makes_them() -> None:
    """Checked on a real Fluent Bit's captures, then on this client's own messages."""
    seen = 0
    # Not time_as_integer_ack: there Fluent Bit hashes the entries with EventTime times, which the
    # capture no longer holds (the wire has whole seconds).
    for case in ("require_ack", "retry_gzip_close", "retry_ack_close"):
        for capture in sorted((VECTORS / case).glob("conn-*.client.bin")):
            for entries, chunk in _entries_and_chunk(capture.read_bytes()):
                assert chunk_id(entries) == chunk, (case, capture.name)
                seen += 1
    assert seen >= 5
    for mode in (Mode.FORWARD, Mode.PACKED_FORWARD, Mode.COMPRESSED_PACKED_FORWARD):
        [c] = build("t", events(3), mode)
        [(entries, chunk)] = _entries_and_chunk(c.data)
        assert chunk == c.chunk == chunk_id(entries)
        assert build("t", events(3), mode)[0] == c  # the same records, the same bytes and id


def test_handshake_against_the_servers_half_and_a_pong_with_a_wrong_digest() -> None:
    from qwen_fluent.forward.handshake import ServerHandshake

    server = ServerHandshake(AuthConfig("s3cret", "receiver-1", {"alice": "pw"}), b"n" * 16, b"a" * 16)
    client = ClientHandshake("s3cret", "fluent-bit-1", "alice", "pw")
    result = server.check_ping(msgpack.unpackb(client.ping(msgpack.unpackb(server.helo()))))
    assert result.ok and result.hostname == "fluent-bit-1" and result.username == "alice"
    assert client.check_pong(msgpack.unpackb(result.pong)) == "receiver-1"
    # A server that does not know the key cannot sign the PONG: the client refuses it.
    impostor = ServerHandshake(AuthConfig("guess", "receiver-1"), b"n" * 16, b"")
    client = ClientHandshake("s3cret", "fluent-bit-1")
    client.ping(msgpack.unpackb(impostor.helo()))
    forged = ["PONG", True, "", "receiver-1", "0" * 128]
    with pytest.raises(HandshakeError, match="digest is wrong"):
        client.check_pong(forged)
    with pytest.raises(HandshakeRefused, match="shared_key mismatch"):
        client.check_pong(["PONG", False, "shared_key mismatch", "", ""])


def test_replies_that_are_not_acks_are_named() -> None:
    assert ack_of({"ack": "c1"}) == "c1"
    for reply in ({"ack": 1}, ["HELO", {}], None, {"ack": "c", "x": 1}):
        with pytest.raises(UnexpectedReply):
            ack_of(reply)


# -- against the real receiver -------------------------------------------------------------------------


@pytest.mark.parametrize("ack", [True, False], ids=["ack", "no-ack"])
@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode_reaches_the_metrics(receiver, mode: Mode, ack: bool) -> None:
    with ForwardSender("127.0.0.1", receiver.forward_port) as sender:
        for batch in range(3):
            sender.send_all(build("llm.inference", events(4, batch * 4), mode, ack=ack))
        assert sender.stats.records == 12 and sender.stats.resends == 0 and sender.stats.connections == 1
        assert sender.stats.acked == (sender.stats.messages if ack else 0)
    acks = sender.stats.messages if ack else 0
    deadline = time.monotonic() + 10
    while True:
        # Without acks the sender is done before the receiver has read everything; with them, the
        # receiver counts an ack just after writing it.
        samples = scrape(receiver.metrics_port)
        done = (total(samples, "qwen_requests_total"), total(samples, "qwen_fluent_acks_total")) == (12, acks)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert total(samples, "qwen_requests_total", status="success") == 12
    assert total(samples, "qwen_input_tokens_total") == sum(100 + i for i in range(12))
    assert total(samples, "qwen_fluent_messages_total", mode=mode.value) == sender.stats.messages
    assert total(samples, "qwen_fluent_acks_total") == acks


@pytest.mark.receiver_flags({"shared_key": "s3cret", "self_hostname": "receiver-1"})
def test_shared_key_handshake_then_data(receiver) -> None:
    with ForwardSender("127.0.0.1", receiver.forward_port, shared_key="s3cret", self_hostname="laptop") as sender:
        sender.send_all(build("llm.inference", events(7), Mode.COMPRESSED_PACKED_FORWARD))
        assert sender.server_hostname == "receiver-1"
    assert total(scrape(receiver.metrics_port), "qwen_requests_total") == 7


@pytest.mark.receiver_flags({"shared_key": "s3cret"})
def test_wrong_key_is_refused_at_once_and_no_key_is_named(receiver) -> None:
    sender = ForwardSender("127.0.0.1", receiver.forward_port, shared_key="wrong", retries=3, retry_wait=0.01)
    with pytest.raises(HandshakeRefused, match="shared_key mismatch"):
        sender.send_all(build("t", events(1), Mode.FORWARD))
    assert sender.stats.connections == 0  # not retried: a new connection cannot fix a wrong key
    plain = ForwardSender("127.0.0.1", receiver.forward_port, retries=0)
    with pytest.raises(HandshakeError, match="give the shared key"):
        plain.send_all(build("t", events(1), Mode.FORWARD))
    samples = scrape(receiver.metrics_port)
    assert total(samples, "qwen_fluent_auth_failures_total", reason="shared_key mismatch") == 1
    assert total(samples, "qwen_requests_total") == 0


def test_users_are_checked(tmp_path) -> None:
    with receiver_from_toml(tmp_path, '[auth]\nshared_key = "k"\nusers = {alice = "pw"}\n') as r:
        with ForwardSender("127.0.0.1", r.forward_port, shared_key="k", username="alice", password="pw") as ok:
            ok.send_all(build("t", events(2), Mode.FORWARD))
        bad = ForwardSender("127.0.0.1", r.forward_port, shared_key="k", username="alice", password="no")
        with pytest.raises(HandshakeRefused, match="username/password mismatch"):
            bad.send_all(build("t", events(2), Mode.FORWARD))
        assert total(scrape(r.metrics_port), "qwen_requests_total") == 2


def test_tls_with_the_receivers_ca_and_refusal_of_an_untrusted_one(tls_dir) -> None:
    from tests.support.receiver import ReceiverThread

    flags = {"tls_cert": str(tls_dir / "server.crt"), "tls_key": str(tls_dir / "server.key")}
    with ReceiverThread(flags) as r:
        with ForwardSender("127.0.0.1", r.forward_port, tls=tls_context(str(tls_dir / "ca.crt"))) as sender:
            for i in range(3):  # one connection for all: TLS 1.3 session tickets are not taken for a close
                sender.send_all(build("t", events(1, i), Mode.COMPRESSED_PACKED_FORWARD))
                time.sleep(0.05)
            assert sender.stats.connections == 1
        untrusted = ForwardSender("127.0.0.1", r.forward_port, tls=tls_context(str(tls_dir / "other.crt")))
        with pytest.raises(TLSFailed, match="not trusted"):
            untrusted.send_all(build("t", events(3), Mode.FORWARD))
        assert untrusted.stats.connections == 0
        with ForwardSender("127.0.0.1", r.forward_port, tls=tls_context(verify=False)) as insecure:
            insecure.send_all(build("t", events(1), Mode.FORWARD))
        assert total(scrape(r.metrics_port), "qwen_requests_total") == 4


def test_a_lost_ack_is_resent_as_the_same_bytes_and_counted_once(receiver) -> None:
    proxy = DroppingProxy(receiver.forward_port)
    try:
        [chunk] = build("llm.inference", events(6), Mode.COMPRESSED_PACKED_FORWARD)
        with ForwardSender("127.0.0.1", proxy.port, retry_wait=0.01, ack_timeout=8) as sender:
            t0 = time.monotonic()
            sender.send(chunk)
            assert time.monotonic() - t0 < 4, "resent after the ack timeout, not on the closed connection"
            assert (sender.stats.resends, sender.stats.connections, sender.stats.writes) == (1, 2, 2)
            assert (sender.stats.messages, sender.stats.acked, sender.stats.records) == (1, 1, 6)
        assert proxy.dropped == 1
        assert bytes(proxy.sent[0]) == bytes(proxy.sent[1]) == chunk.data  # same bytes, same chunk id
        samples = scrape(receiver.metrics_port)
        # The resend is recognised by its digest (docs/reliability.md): counted once, acked twice.
        assert total(samples, "qwen_requests_total") == 6
        assert total(samples, "qwen_fluent_duplicate_messages_total") == 1
        assert wait_total(receiver.metrics_port, "qwen_fluent_acks_total", 2) == 2
    finally:
        proxy.close()


def test_a_peer_that_never_acks_exhausts_the_bounded_retries() -> None:
    peer = SilentPeer()
    try:
        [chunk] = build("t", events(2), Mode.FORWARD)
        sender = ForwardSender("127.0.0.1", peer.port, ack_timeout=0.2, retries=2, retry_wait=0.01)
        t0 = time.monotonic()
        with pytest.raises(DeliveryFailed, match="not delivered after 3 tries") as info:
            sender.send(chunk)
        assert isinstance(info.value.__cause__, AckTimeout) and info.value.attempts == 3
        assert time.monotonic() - t0 < 5
        assert sender.stats.resends == 2 and sender.stats.messages == 0
        deadline = time.monotonic() + 5
        while sum(map(len, peer.received)) < 3 * len(chunk.data) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [bytes(b) for b in peer.received] == [chunk.data] * 3
    finally:
        peer.close()


def test_nobody_listening_is_a_delivery_failure_naming_the_address() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # the port is free and nobody listens on it
    sender = ForwardSender("127.0.0.1", port, retries=1, retry_wait=0.01)
    with pytest.raises(DeliveryFailed, match=f"2 tries to 127.0.0.1:{port}: Connection refused"):
        sender.send_all(build("t", events(1), Mode.FORWARD))


def test_close_from_another_thread_stops_a_blocked_send_at_once() -> None:
    peer = SilentPeer()
    try:
        sender = ForwardSender("127.0.0.1", peer.port, ack_timeout=30)
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                sender.send_all(build("t", events(1), Mode.FORWARD))
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        t = threading.Thread(target=run)
        t.start()
        while not peer.received:
            time.sleep(0.01)
        t0 = time.monotonic()
        sender.close()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 1
        assert isinstance(outcome[0], SenderClosed)
    finally:
        peer.close()


def test_a_connection_the_receiver_closed_is_replaced_before_writing(tmp_path) -> None:
    """Without acks a message written into a connection the receiver has closed is lost; the sender
    looks for the close first. Here the receiver closes connections idle for 0.3 s."""
    with receiver_from_toml(tmp_path, "[limits]\nidle_timeout = 0.3\n") as r:
        with ForwardSender("127.0.0.1", r.forward_port) as sender:
            sender.send_all(build("t", events(2), Mode.FORWARD, ack=False))
            deadline = time.monotonic() + 10
            while total(scrape(r.metrics_port), "qwen_fluent_errors_total", reason="idle_timeout") < 1:
                assert time.monotonic() < deadline, "the receiver did not close the idle connection"
                time.sleep(0.05)
            sender.send_all(build("t", events(3, 2), Mode.FORWARD, ack=False))
            assert (sender.stats.connections, sender.stats.resends, sender.stats.records) == (2, 0, 5)
            deadline = time.monotonic() + 10
            while total(scrape(r.metrics_port), "qwen_requests_total") < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert total(scrape(r.metrics_port), "qwen_requests_total") == 5


def test_unix_socket(tmp_path) -> None:
    from tests.support.receiver import ReceiverThread

    path = str(tmp_path / "forward.sock")
    with ReceiverThread({"unix_socket": path}) as r:
        with ForwardSender(unix_path=path) as sender:
            sender.send_all(build("t", events(3), Mode.PACKED_FORWARD))
            assert sender.where == path
        samples = scrape(r.metrics_port)
        assert total(samples, "qwen_requests_total") == 3
        assert total(samples, "qwen_fluent_connections_total", transport="unix") == 1
