"""Interop with the Node client @fluent-org/logger (an independent Forward implementation).

Each test starts the real asyncio server on loopback and runs ``peer.js`` as a
subprocess: it speaks every eventMode the client has, its ack option, its
shared-key/user handshake and TLS. The peer prints what it saw (handshake
result, acks, per-event outcome); the test checks that against what the
server's sink received and what its counters say.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qwen_fluent.forward import AuthConfig, Limits, Mode

from .conftest import run_peer, start_server

pytestmark = pytest.mark.interop

MODES = {
    "Message": Mode.MESSAGE,
    "Forward": Mode.FORWARD,
    "PackedForward": Mode.PACKED_FORWARD,
    "CompressedPackedForward": Mode.COMPRESSED_PACKED_FORWARD,
}

# Three events with explicit EventTimes (distinct nanoseconds), emitted in one tick.
TIMED = [
    {"label": "req", "record": {"request_id": f"r{i}", "status": "success", "total_time_ms": 10 + i}, "time": {"sec": 1_700_000_000 + i, "nsec": 123_456_789 + i}}
    for i in range(3)
]


def run(node: str, server_kwargs: dict[str, Any], peer: dict[str, Any]):
    """Start a server, run the peer against it, stop the server; return (server, sink, peer output)."""

    async def main():
        server, sink = await start_server(**server_kwargs)
        try:
            config = {"port": server.port, "tagPrefix": "llm", **peer}
            result = await run_peer(node, config)
        finally:
            await server.stop()
        return server, sink, result

    return asyncio.run(main())


def _ok(result: dict[str, Any]) -> None:
    assert result["established"], result
    assert result["errors"] == [], result
    for batch in result["batches"]:
        assert batch and all(e["ok"] for e in batch), result


@pytest.mark.parametrize("ack", [False, True], ids=["no-ack", "ack"])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_event_mode(node, mode, ack):
    server, sink, result = run(node, {}, {"mode": mode, "ack": ack, "batches": [TIMED, TIMED[:1]]})
    _ok(result)
    # Forward modes pack each batch (one tick) into one message; Message mode sends one per event.
    expected_messages = 4 if mode == "Message" else 2
    assert len(sink.messages) == expected_messages
    assert {m.mode for m in sink.messages} == {MODES[mode]}
    assert all(m.tag == "llm.req" and m.invalid == {} for m in sink.messages)
    assert [r["request_id"] for r in sink.records] == ["r0", "r1", "r2", "r0"]
    times = [e.time for m in sink.messages for e in m.entries]
    assert times == pytest.approx([1_700_000_000.123456789, 1_700_000_001.12345679, 1_700_000_002.123456791, 1_700_000_000.123456789], abs=1e-6)
    if mode != "Message":
        assert [m.options["size"] for m in sink.messages] == [3, 1]
    if ack:
        # every chunk the client sent was acked, in order, and the client matched each ack to its events
        assert result["acks"] == [m.chunk for m in sink.messages]
        assert server.stats.acks == expected_messages
    else:
        assert all(m.chunk is None for m in sink.messages)
        assert result["acks"] == [] and server.stats.acks == 0
    assert server.stats.messages[MODES[mode].value] == expected_messages
    assert server.stats.errors == {}


@pytest.mark.parametrize("milliseconds", [False, True])
def test_time_resolution(node, milliseconds):
    """The client sends integer seconds by default and EventTime with ``milliseconds``."""
    event = {"label": "t", "record": {"k": "v"}, "time": 1_700_000_000_987}  # ms since the epoch
    server, sink, result = run(node, {}, {"mode": "Forward", "milliseconds": milliseconds, "batches": [[event]]})
    _ok(result)
    (entry,) = sink.messages[0].entries
    if milliseconds:
        assert entry.time == pytest.approx(1_700_000_000.987, abs=1e-6)
    else:
        assert entry.time == 1_700_000_000


def test_large_compressed_chunk_with_ack(node):
    """Two thousand events in one CompressedPackedForward chunk: one message, one ack, every record."""
    batch = [{"label": "bulk", "record": {"request_id": f"r{i}", "pad": "x" * 100}} for i in range(2000)]
    server, sink, result = run(node, {}, {"mode": "CompressedPackedForward", "ack": True, "batches": [batch]})
    _ok(result)
    (message,) = sink.messages
    assert len(message.entries) == 2000 and message.options["size"] == 2000
    assert [r["request_id"] for r in sink.records] == [f"r{i}" for i in range(2000)]
    assert result["acks"] == [message.chunk]


AUTH = AuthConfig("secret", "receiver")
USERS = AuthConfig("secret", "receiver", {"alice": "s3cret", "bob": "hunter2"})


@pytest.mark.parametrize("mode", ["Message", "PackedForward"])
def test_shared_key(node, mode):
    security = {"clientHostname": "node-a", "sharedKey": "secret"}
    server, sink, result = run(node, {"auth": AUTH}, {"mode": mode, "ack": True, "security": security, "batches": [TIMED]})
    _ok(result)  # the client also verified our PONG digest, signed with our hostname
    assert len(sink.records) == 3 and server.stats.auth_failures == {}


def test_username_and_password(node):
    security = {"clientHostname": "node-a", "sharedKey": "secret", "username": "bob", "password": "hunter2"}
    server, sink, result = run(node, {"auth": USERS}, {"mode": "Forward", "ack": True, "security": security, "batches": [TIMED]})
    _ok(result)
    assert len(sink.records) == 3


@pytest.mark.parametrize(
    "security,server_reason",
    [
        ({"clientHostname": "node-a", "sharedKey": "wrong"}, "shared_key mismatch"),
        ({"clientHostname": "node-a", "sharedKey": "secret", "username": "bob", "password": "wrong"}, "username/password mismatch"),
        ({"clientHostname": "node-a", "sharedKey": "secret", "username": "mallory", "password": "x"}, "username/password mismatch"),
        ({"clientHostname": "node-a", "sharedKey": "secret"}, "username/password mismatch"),  # no user at all
    ],
    ids=["wrong-key", "wrong-password", "unknown-user", "no-user"],
)
def test_refused_handshake(node, security, server_reason):
    server, sink, result = run(node, {"auth": USERS}, {"mode": "Forward", "ack": True, "security": security, "batches": [TIMED]})
    assert not result["established"]
    assert result["errors"] == [f"AuthError: Authentication failed: {server_reason}"]
    assert sink.messages == []
    assert server.stats.auth_failures == {server_reason: 1}


def test_client_without_auth_gets_nothing_accepted(node):
    """A client that ignores the HELO and sends data first: its data is not a PING, nothing is accepted."""
    server, sink, result = run(node, {"auth": AUTH}, {"mode": "Forward", "ack": True, "ackTimeout": 1000, "batches": [TIMED]})
    assert any("Server expected authentication" in e for e in result["errors"])
    assert not any(e["ok"] for e in result["batches"][0])
    assert sink.messages == [] and server.stats.acks == 0
    assert server.stats.auth_failures == {"invalid ping message": 1}


@pytest.mark.parametrize("with_auth", [False, True], ids=["tls", "tls+shared-key"])
def test_tls(node, tls_files, with_auth):
    server_kwargs: dict[str, Any] = {"tls_cert": str(tls_files["server_crt"]), "tls_key": str(tls_files["server_key"])}
    peer: dict[str, Any] = {"mode": "PackedForward", "ack": True, "tls": {"ca": str(tls_files["ca_crt"])}, "batches": [TIMED]}
    if with_auth:
        server_kwargs["auth"] = AUTH
        peer["security"] = {"clientHostname": "node-a", "sharedKey": "secret"}
    server, sink, result = run(node, server_kwargs, peer)
    _ok(result)
    assert len(sink.records) == 3 and server.stats.connections_opened["tls"] == 1


def test_mutual_tls(node, tls_files):
    server_kwargs = {
        "tls_cert": str(tls_files["server_crt"]),
        "tls_key": str(tls_files["server_key"]),
        "tls_client_ca": str(tls_files["ca_crt"]),
    }
    tls = {"ca": str(tls_files["ca_crt"]), "cert": str(tls_files["client_crt"]), "key": str(tls_files["client_key"])}
    server, sink, result = run(node, server_kwargs, {"mode": "Forward", "ack": True, "tls": tls, "batches": [TIMED]})
    _ok(result)
    assert len(sink.records) == 3


def test_tls_client_refuses_untrusted_server(node, tls_files):
    """Sanity check of the TLS test itself: the client verifies the server certificate."""
    server_kwargs = {"tls_cert": str(tls_files["client_crt"]), "tls_key": str(tls_files["client_key"])}  # CN fluent-bit
    server, sink, result = run(node, server_kwargs, {"mode": "Forward", "tls": {"ca": str(tls_files["ca_crt"]), "servername": "not-this-host"}, "batches": [TIMED]})
    assert not result["established"] and result["errors"]
    assert sink.messages == []


def test_unix_socket(node, tmp_path):
    path = str(tmp_path / "forward.sock")
    server, sink, result = run(node, {"port": None, "unix_socket": path}, {"path": path, "mode": "Forward", "ack": True, "batches": [TIMED]})
    _ok(result)
    assert len(sink.records) == 3 and server.stats.connections_opened["unix"] == 1


def test_rejected_message_is_never_acked(node):
    """A chunk over the message limit closes the connection; the client's ack times out (so it would resend)."""
    big = [{"label": "big", "record": {"pad": "x" * 5000}}]
    server, sink, result = run(
        node, {"limits": Limits(max_message_bytes=4096)}, {"mode": "Forward", "ack": True, "ackTimeout": 1000, "batches": [big]}
    )
    assert result["established"]
    (outcome,) = result["batches"][0]
    assert not outcome["ok"] and "ack response timeout" in outcome["error"]
    assert result["acks"] == [] and sink.messages == []
    assert server.stats.errors == {"message_too_large": 1} and server.stats.acks == 0


def test_sink_failure_is_never_acked(node):
    async def main():
        server, sink = await start_server()
        sink.fail = True
        try:
            result = await run_peer(node, {"port": server.port, "tagPrefix": "llm", "mode": "PackedForward", "ack": True, "ackTimeout": 1000, "batches": [TIMED]})
        finally:
            await server.stop()
        return server, result

    server, result = asyncio.run(main())
    assert not any(e["ok"] for e in result["batches"][0])
    assert result["acks"] == [] and server.stats.acks == 0
    assert server.stats.errors == {"sink_failed": 1}
