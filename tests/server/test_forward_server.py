"""The asyncio Forward server over real sockets: TCP, TLS, Unix; limits; timeouts; shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import ssl

import msgpack
import pytest

from qwen_fluent.forward import AuthConfig, Limits

from ..forward.vectors import captures
from .conftest import read_for, start_server

RECORD = {"request_id": "r1", "status": "success", "total_time_ms": 12}


def forward(tag: str, n: int, chunk: str | None = None) -> bytes:
    entries = [[1_700_000_000 + i, dict(RECORD, i=i)] for i in range(n)]
    message = [tag, entries] + ([{"chunk": chunk}] if chunk else [])
    return msgpack.packb(message, use_bin_type=True)


def test_tcp_capture_replay_is_acked():
    """Replaying a real Fluent Bit require_ack capture over TCP gives exactly its ack."""
    capture = captures("require_ack")[0]

    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(capture.client)
        await writer.drain()
        reply = await reader.read(100)
        writer.close()
        await server.stop()
        return server, sink, reply

    server, sink, reply = asyncio.run(main())
    assert reply == capture.server
    assert len(sink.records) == 2
    assert server.stats.acks == 1 and server.stats.messages["forward"] == 1
    assert server.stats.connections_opened["tcp"] == 1 and server.stats.connections_active == 0


def test_many_messages_one_write_and_keepalive():
    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        payload = b"".join(forward("llm.a", 3, chunk=f"c{i}") for i in range(50)) + msgpack.packb(None)
        writer.write(payload)
        await writer.drain()
        acks = b""
        while acks.count(b"\xa3ack") < 50:
            acks += await asyncio.wait_for(reader.read(65536), 5)
        # keepalive: the same connection takes more after the acks
        writer.write(forward("llm.b", 1, chunk="last"))
        acks += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        await server.stop()
        return server, sink, acks

    server, sink, acks = asyncio.run(main())
    unpacker = msgpack.Unpacker()
    unpacker.feed(acks)
    assert [a["ack"] for a in unpacker] == [f"c{i}" for i in range(50)] + ["last"]
    assert len(sink.records) == 151
    assert server.stats.heartbeats == 1


def test_bad_connection_is_closed_others_keep_working():
    async def main():
        server, sink = await start_server(limits=Limits(max_message_bytes=4096))
        good_r, good_w = await asyncio.open_connection("127.0.0.1", server.port)
        bad_r, bad_w = await asyncio.open_connection("127.0.0.1", server.port)
        huge_r, huge_w = await asyncio.open_connection("127.0.0.1", server.port)
        bad_w.write(b"\xc1garbage")  # 0xc1 is never used in msgpack
        huge_w.write(forward("llm.huge", 200, chunk="big"))
        bad_reply = await read_for(bad_r)
        huge_reply = await read_for(huge_r)
        good_w.write(forward("llm.ok", 2, chunk="ok"))
        good_reply = await asyncio.wait_for(good_r.read(100), 5)
        good_w.close()
        await server.stop()
        return server, sink, bad_reply, huge_reply, good_reply

    server, sink, bad_reply, huge_reply, good_reply = asyncio.run(main())
    assert bad_reply == b"" and huge_reply == b""  # closed, never acked
    assert msgpack.unpackb(good_reply) == {"ack": "ok"}
    assert server.stats.errors["invalid_msgpack"] == 1
    assert server.stats.errors["message_too_large"] == 1
    assert len(sink.records) == 2


def test_sink_failure_means_no_ack():
    async def main():
        server, sink = await start_server()
        sink.fail = True
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(forward("llm.a", 1, chunk="x"))
        reply = await read_for(reader)
        await server.stop()
        return server, reply

    server, reply = asyncio.run(main())
    assert reply == b""
    assert server.stats.errors["sink_failed"] == 1 and server.stats.acks == 0


def test_signal_messages_are_counted_skipped_and_acked():
    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        msg = ["metrics.cpu", b"\x93\x01\x02\x03", {"chunk": "m1", "size": 7, "fluent_signal": 1}]
        writer.write(msgpack.packb(msg, use_bin_type=True))
        reply = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        await server.stop()
        return server, sink, reply

    server, sink, reply = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "m1"}
    assert sink.messages == []
    assert server.stats.records["skipped_signal"] == 7


def test_idle_timeout_closes_connection():
    async def main():
        server, _ = await start_server(limits=Limits(idle_timeout=0.2))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(forward("llm.a", 1)[:5])  # stall in the middle of a message
        reply = await read_for(reader, 3)
        await server.stop()
        return server, reply

    server, reply = asyncio.run(main())
    assert reply == b""
    assert server.stats.errors["idle_timeout"] == 1


def test_connection_limit():
    async def main():
        server, _ = await start_server(limits=Limits(max_connections=2))
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        third = await read_for(conns[2][0], 2)
        conns[0][1].write(forward("llm.a", 1, chunk="k"))
        first = await asyncio.wait_for(conns[0][0].read(100), 5)
        await server.stop()
        return server, third, first

    server, third, first = asyncio.run(main())
    assert third == b""
    assert msgpack.unpackb(first) == {"ack": "k"}
    assert server.stats.connections_refused == 1


def _ping(nonce: bytes, key: str, hostname: str = "node-a", signed_hostname: str | None = None) -> bytes:
    salt = b"\xff" * 16
    digest = hashlib.sha512(salt + (signed_hostname or hostname).encode() + nonce + key.encode()).hexdigest()
    return msgpack.packb(["PING", hostname, salt, digest, "", ""], use_bin_type=True)


@pytest.mark.parametrize("key,ok", [("secret", True), ("wrong", False)])
def test_shared_key_handshake_over_tcp(key, ok):
    async def main():
        server, sink = await start_server(auth=AuthConfig("secret", "receiver"))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        unpacker = msgpack.Unpacker()
        unpacker.feed(await asyncio.wait_for(reader.read(1000), 5))
        helo = unpacker.unpack()
        writer.write(_ping(helo[1]["nonce"], key) + forward("llm.a", 1, chunk="a"))
        reply = await read_for(reader, 2 if ok else 5)
        await server.stop()
        return server, sink, helo, reply

    server, sink, helo, reply = asyncio.run(main())
    assert helo[0] == "HELO" and len(helo[1]["nonce"]) == 16
    unpacker = msgpack.Unpacker()
    unpacker.feed(reply)
    pong = unpacker.unpack()
    assert pong[0] == "PONG" and pong[1] is ok
    if ok:
        assert unpacker.unpack() == {"ack": "a"} and len(sink.records) == 1
    else:
        assert pong[2] == "shared_key mismatch" and sink.records == []
        assert server.stats.auth_failures["shared_key mismatch"] == 1


def test_handshake_timeout():
    async def main():
        server, _ = await start_server(auth=AuthConfig("secret", "receiver"), limits=Limits(handshake_timeout=0.2))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        data = await read_for(reader, 3)
        await server.stop()
        return server, data

    server, data = asyncio.run(main())
    assert msgpack.unpackb(data)[0] == "HELO"  # HELO, then closed
    assert server.stats.auth_failures["handshake_timeout"] == 1


@pytest.mark.parametrize("mutual", [False, True])
def test_tls(tls_files, mutual):
    async def main():
        kwargs = dict(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]))
        if mutual:
            kwargs["tls_client_ca"] = str(tls_files["ca_crt"])
        server, sink = await start_server(**kwargs)
        ctx = ssl.create_default_context(cafile=str(tls_files["ca_crt"]))
        if mutual:
            ctx.load_cert_chain(str(tls_files["client_crt"]), str(tls_files["client_key"]))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, server_hostname="localhost")
        writer.write(forward("llm.tls", 2, chunk="t"))
        reply = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        refused = None
        if mutual:  # without a client certificate the handshake must fail
            bare = ssl.create_default_context(cafile=str(tls_files["ca_crt"]))
            try:
                r, w = await asyncio.open_connection("127.0.0.1", server.port, ssl=bare, server_hostname="localhost")
                w.write(forward("llm.x", 1, chunk="x"))
                refused = await read_for(r, 2)
            except (ssl.SSLError, ConnectionResetError):
                refused = b""
        await server.stop()
        return server, sink, reply, refused

    server, sink, reply, refused = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "t"}
    assert server.stats.connections_opened["tls"] >= 1
    assert [r["i"] for r in sink.records] == [0, 1]
    if mutual:
        assert refused == b""


def test_unix_socket(tmp_path):
    path = str(tmp_path / "fwd.sock")

    async def main():
        server, sink = await start_server(port=None, unix_socket=path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(forward("llm.unix", 1, chunk="u"))
        reply = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        await server.stop()
        return server, sink, reply

    server, sink, reply = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "u"}
    assert server.stats.connections_opened["unix"] == 1


def test_graceful_stop_finishes_message_in_flight():
    """SIGTERM path: stop accepting, let a half-sent message complete, ack it, then close."""
    payload = forward("llm.a", 10, chunk="inflight")

    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(payload[:20])
        await writer.drain()
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.1)
        # new connections are refused while stopping
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(payload[20:])
        reply = await read_for(reader, 3)
        await stopping
        return server, sink, reply

    server, sink, reply = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "inflight"}
    assert len(sink.records) == 10


def test_graceful_stop_is_bounded():
    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(forward("llm.a", 10, chunk="never")[:20])
        await writer.drain()
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await server.stop(grace=0.3)
        return server, loop.time() - t0

    server, took = asyncio.run(main())
    assert took < 2.0
    assert server.stats.errors["shutdown"] == 1 and server.stats.acks == 0


def test_port_in_use_raises_oserror():
    async def main():
        server, _ = await start_server()
        try:
            with pytest.raises(OSError):
                await start_server(port=server.port)
        finally:
            await server.stop()

    asyncio.run(main())


def test_group_markers_are_counted_not_delivered():
    """Fluent Bit's group start and end (EventTime seconds -1 and -2 as int32) around two records."""
    marker = lambda sec: [[msgpack.ExtType(0, sec.to_bytes(4, "big") + bytes(4)), {}], {"resource": {}}]  # noqa: E731
    entries = [marker(0xFFFFFFFF), [1_700_000_000, {"i": 0}], [1_700_000_001, {"i": 1}], marker(0xFFFFFFFE)]

    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(msgpack.packb(["llm.otel", entries, {"chunk": "g"}]))
        reply = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        await server.stop()
        return server, sink, reply

    server, sink, reply = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "g"}
    assert [r["i"] for r in sink.records] == [0, 1]
    assert server.stats.records == {"group_marker": 2}
