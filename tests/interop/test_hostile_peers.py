"""Hostile and broken peers against the real server over loopback: raw sockets doing what no
well-behaved Forward client does (never reading acks, half-closing, resetting, speaking plain
TCP to the TLS port), checking that each costs bounded memory and affects its own connection only.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import msgpack
import pytest

from .conftest import read_for, start_server

pytestmark = pytest.mark.interop


def _message(i: int, chunk_len: int = 200) -> bytes:
    return msgpack.packb(["llm.a", [[1_700_000_000, {"i": i}]], {"chunk": f"{i:0{chunk_len}d}"}])


def test_client_that_never_reads_its_acks_cannot_grow_server_memory():
    """A peer that asks for acks and never reads them: the server stops reading from it once its
    write buffer is full, instead of queueing acks without bound; nothing is lost when it reads again."""

    async def main():
        server, sink = await start_server()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        stream = b"".join(_message(i) for i in range(50_000))  # 11 MB of chunks, as many acks
        view, pos, blocked_since = memoryview(stream), 0, None
        largest_buffer = 0
        while pos < len(stream):
            try:
                pos += sock.send(view[pos : pos + 65536])
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or loop.time()
                if loop.time() - blocked_since > 1.0:
                    break  # the server stopped reading: it is pushing back
            for protocol in server.connections:
                largest_buffer = max(largest_buffer, protocol.transport.get_write_buffer_size())
            await asyncio.sleep(0.001)
        pushed_back = pos < len(stream)
        # now read the acks: the server resumes, and every chunk sent is acked, in order
        acks, unpacker = [], msgpack.Unpacker()
        deadline = loop.time() + 60
        while len(acks) < 50_000 and loop.time() < deadline:
            if pos < len(stream):
                try:
                    pos += sock.send(view[pos : pos + 65536])
                except BlockingIOError:
                    pass
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            unpacker.feed(data)
            acks.extend(a["ack"] for a in unpacker)
        sock.close()
        await server.stop(grace=1)
        return server, sink, pushed_back, largest_buffer, acks

    server, sink, pushed_back, largest_buffer, acks = asyncio.run(main())
    assert pushed_back
    # the write buffer stays within asyncio's high-water mark plus the acks of one read
    assert largest_buffer < 1 << 20
    assert [int(a) for a in acks] == list(range(50_000))
    assert len(sink.records) == 50_000 and server.stats.errors == {}


def test_half_close_after_a_message_still_gets_its_ack():
    """A client that shuts down its sending side right after a chunk still receives the ack."""

    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_message(7, chunk_len=4))
        writer.write_eof()
        reply = await read_for(reader, 5)
        writer.close()
        await server.stop()
        return server, reply

    server, reply = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "0007"}
    assert server.stats.errors == {}


def test_half_close_inside_a_message_is_counted_and_not_acked():
    async def main():
        server, sink = await start_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_message(7)[:-5])
        writer.write_eof()
        reply = await read_for(reader, 5)
        writer.close()
        await server.stop()
        return server, sink, reply

    server, sink, reply = asyncio.run(main())
    assert reply == b"" and sink.messages == []
    assert server.stats.errors == {"truncated": 1}


def test_reset_in_the_middle_of_a_message():
    """A peer that resets its connection mid-message: nothing delivered, the server keeps serving."""

    async def main():
        server, sink = await start_server()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(_message(1)[:30])
        await asyncio.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        sock.close()
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_message(2, chunk_len=4))
        reply = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        await server.stop()
        return server, sink, reply

    server, sink, reply = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "0002"}
    assert [r["i"] for r in sink.records] == [2]
    assert server.stats.connections_active == 0


def test_plain_tcp_to_the_tls_port(tls_files):
    """A Forward message sent in clear text to the TLS port is a failed TLS handshake, not data."""

    async def main():
        server, sink = await start_server(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_message(1, chunk_len=4))
        reply = await read_for(reader, 5)
        writer.close()
        # and the port still serves TLS
        ctx = ssl.create_default_context(cafile=str(tls_files["ca_crt"]))
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, server_hostname="localhost")
        w2.write(_message(2, chunk_len=4))
        ok = await asyncio.wait_for(r2.read(100), 5)
        w2.close()
        await server.stop()
        return server, sink, reply, ok

    server, sink, reply, ok = asyncio.run(main())
    assert b"\xa3ack" not in reply
    assert msgpack.unpackb(ok) == {"ack": "0002"}
    assert [r["i"] for r in sink.records] == [2]


def test_slow_drip_is_bounded_by_the_idle_timeout():
    """One byte at a time, slower than the idle timeout: closed, nothing delivered."""
    from qwen_fluent.forward import Limits

    async def main():
        server, sink = await start_server(limits=Limits(idle_timeout=0.3))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        for byte in _message(1, chunk_len=4)[:10]:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)  # fast enough: each byte resets the timer
        await asyncio.sleep(0.6)  # now silent for longer than the timeout
        reply = await read_for(reader, 3)
        await server.stop()
        return server, sink, reply, time.monotonic() - start

    server, sink, reply, took = asyncio.run(main())
    assert reply == b"" and sink.messages == []
    assert server.stats.errors == {"idle_timeout": 1}
