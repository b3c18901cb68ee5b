"""Admission and deadlines of the real asyncio Forward server, over loopback.

Clients bind other 127.0.0.x source addresses to stand for other machines.
Each test uses small limits so that it runs in well under a second, and
checks both sides: what the peer sees (closed, refused, acked) and the
counted reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import msgpack
import pytest

from qwen_fluent.forward import AuthConfig, Limits

from .conftest import read_for, start_server

KEY = "s3cret"
LOGGER = "qwen_fluent.server"


def forward(chunk: str, n: int = 1) -> bytes:
    return msgpack.packb(["llm.a", [[1_700_000_000, {"i": i}] for i in range(n)], {"chunk": chunk}])


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed(reader: asyncio.StreamReader, seconds: float = 5.0) -> bool:
    """Whether the server closes (or resets) the connection within ``seconds``."""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), seconds)
            if not chunk:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except asyncio.TimeoutError:
        return False


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str = KEY) -> bool:
    helo = msgpack.unpackb(await reader.read(4096), raw=False, unicode_errors="surrogateescape")
    nonce = helo[1]["nonce"]
    nonce = nonce.encode("utf-8", "surrogateescape") if isinstance(nonce, str) else nonce
    salt = b"0123456789abcdef"
    digest = hashlib.sha512(salt + b"client" + nonce + key.encode()).hexdigest()
    writer.write(msgpack.packb(["PING", "client", salt, digest, "", ""], use_bin_type=True))
    pong = msgpack.unpackb(await reader.read(4096), raw=False)
    return pong[1] is True


async def acked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunk: str) -> bool:
    writer.write(forward(chunk))
    reply = await asyncio.wait_for(reader.read(100), 5)
    return msgpack.unpackb(reply) == {"ack": chunk}


def test_one_address_cannot_take_every_slot() -> None:
    async def main():
        server, _ = await start_server(limits=Limits(max_connections_per_address=2))
        try:
            held = [await connect(server.port, "127.0.0.2") for _ in range(2)]
            third = await connect(server.port, "127.0.0.2")
            refused = await closed(third[0], 2)
            other = await connect(server.port, "127.0.0.3")
            ok = await acked(*other, "c1")
            for _, w in held + [other]:
                w.close()
            return refused, ok, server.stats
        finally:
            await server.stop()

    refused, ok, stats = asyncio.run(main())
    assert refused and ok
    assert stats.errors["too_many_from_address"] == 1 and stats.connections_refused == 1


def test_slots_come_back_when_an_address_lets_go() -> None:
    async def main():
        server, _ = await start_server(limits=Limits(max_connections_per_address=1))
        try:
            r, w = await connect(server.port, "127.0.0.2")
            w.close()
            await w.wait_closed()
            for _ in range(50):  # the server sees the close on its next loop turn
                if not server.per_address:
                    break
                await asyncio.sleep(0.01)
            again = await connect(server.port, "127.0.0.2")
            ok = await acked(*again, "c2")
            again[1].close()
            return ok
        finally:
            await server.stop()

    assert asyncio.run(main())


def test_a_trickled_message_is_closed_at_the_deadline() -> None:
    """Slow-loris: one byte at a time keeps the idle timer fresh, but the message never completes."""

    async def main():
        server, sink = await start_server(limits=Limits(message_deadline=0.5, idle_timeout=30))
        try:
            r, w = await connect(server.port, "127.0.0.2")
            data = forward("slow")
            for byte in data[:-1]:
                w.write(bytes([byte]))
                if await closed(r, 0.05):
                    break
            gone = await closed(r, 2)
            return gone, sink, server.stats
        finally:
            await server.stop()

    gone, sink, stats = asyncio.run(main())
    assert gone and sink.messages == []
    assert stats.errors == {"message_deadline": 1}


def test_the_deadline_does_not_touch_a_connection_between_messages() -> None:
    async def main():
        server, sink = await start_server(limits=Limits(message_deadline=0.2, idle_timeout=30))
        try:
            r, w = await connect(server.port)
            ok1 = await acked(r, w, "a")
            await asyncio.sleep(0.5)  # idle between messages: longer than the deadline
            ok2 = await acked(r, w, "b")
            w.close()
            return ok1 and ok2, server.stats
        finally:
            await server.stop()

    ok, stats = asyncio.run(main())
    assert ok and "message_deadline" not in stats.errors


def test_waiting_for_the_ping_draws_from_a_small_pool_and_the_oldest_makes_room() -> None:
    async def main():
        server, sink = await start_server(auth=AuthConfig(shared_key=KEY, self_hostname="receiver"),
                                          limits=Limits(max_unauthenticated_connections=2))
        try:
            idle = [await connect(server.port, "127.0.0.2") for _ in range(2)]
            for r, _ in idle:
                await r.read(4096)  # the HELO
            good = await connect(server.port, "127.0.0.3")
            authenticated = await authenticate(*good)
            first_evicted = await closed(idle[0][0], 2)
            ok = await acked(*good, "g")
            for _, w in idle + [good]:
                w.close()
            return authenticated, first_evicted, ok, server.stats
        finally:
            await server.stop()

    authenticated, first_evicted, ok, stats = asyncio.run(main())
    assert authenticated and first_evicted and ok
    assert stats.errors["unauthenticated_evicted"] == 1


def test_an_unauthenticated_peer_may_not_send_a_large_message() -> None:
    async def main():
        server, _ = await start_server(auth=AuthConfig(shared_key=KEY, self_hostname="receiver"))
        try:
            r, w = await connect(server.port, "127.0.0.2")
            await r.read(4096)
            w.write(b"\x92\xa1t\xdb\x00\x78\x00\x00")  # str32 of 7.5 MiB, before any PING
            gone = await closed(r, 2)
            w.close()
            return gone, server.stats
        finally:
            await server.stop()

    gone, stats = asyncio.run(main())
    assert gone and stats.errors == {"unauthenticated_too_large": 1}


@pytest.mark.parametrize("payload,reason", [
    (b"GET /metrics HTTP/1.1\r\nHost: receiver\r\n\r\n", "http_on_forward_port"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "tls_on_plain_port"),
])
def test_another_protocol_on_the_plain_port_is_named_in_the_log_and_counted(caplog, payload, reason) -> None:
    async def main():
        server, _ = await start_server()
        try:
            r, w = await connect(server.port, "127.0.0.2")
            w.write(payload)
            gone = await closed(r, 2)
            w.close()
            return gone, server.stats
        finally:
            await server.stop()

    caplog.set_level(logging.WARNING, logger=LOGGER)
    gone, stats = asyncio.run(main())
    assert gone and stats.errors == {reason: 1}
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert f"127.0.0.2" in line and reason in line
    assert ("HTTP request" in line) if reason.startswith("http") else ("TLS handshake" in line and "tls off" in line)


@pytest.mark.parametrize("host,key,warned", [
    ("0.0.0.0", None, True),
    ("127.0.0.1", None, False),
    ("0.0.0.0", KEY, False),
])
def test_a_warning_at_start_when_reachable_beyond_loopback_without_a_key(caplog, host, key, warned) -> None:
    async def main():
        auth = AuthConfig(shared_key=key, self_hostname="receiver") if key else None
        server, _ = await start_server(host=host, auth=auth)
        await server.stop()

    caplog.set_level(logging.WARNING, logger=LOGGER)
    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER and "neither a shared key nor TLS" in r.getMessage()]
    assert bool(lines) is warned
    if warned:
        assert "docs/security.md" in lines[0]


def test_past_the_memory_budget_the_largest_partial_message_is_closed() -> None:
    """Two peers hold large partial messages; the third read past the budget closes the largest holder,
    and a client sending ordinary messages meanwhile is untouched."""

    async def main():
        server, sink = await start_server(limits=Limits(max_buffered_bytes=300_000))
        try:
            big = await connect(server.port, "127.0.0.2")
            big[1].write(b"\x92\xa1t\xdb\x00\x10\x00\x00" + b"x" * 200_000)  # 1 MiB str, 200 kB of it sent
            await big[1].drain()
            await asyncio.sleep(0.2)
            small = await connect(server.port, "127.0.0.3")
            small[1].write(b"\x92\xa1t\xdb\x00\x10\x00\x00" + b"x" * 150_000)  # the total passes 300 kB now
            await small[1].drain()
            big_closed = await closed(big[0], 2)
            small_open = not await closed(small[0], 0.3)
            good = await connect(server.port)
            ok = await acked(*good, "g")
            for _, w in (big, small, good):
                w.close()
            return big_closed, small_open, ok, server.stats, server
        finally:
            await server.stop()

    big_closed, small_open, ok, stats, server = asyncio.run(main())
    assert big_closed and small_open and ok
    # the small holder is closed by the test itself, mid-message: truncated
    assert stats.errors == {"memory_budget": 1, "truncated": 1}
    assert server.buffered == 0  # every connection gave its share back when it closed


def test_only_the_allowed_networks_may_connect() -> None:
    """``allowed_networks``: an address outside them is refused as it is accepted, before it sends a byte."""
    import ipaddress

    async def main():
        networks = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.0.0.0/8"))
        server, sink = await start_server(allowed_networks=networks)
        try:
            outsider = await connect(server.port, "127.0.0.3")
            refused = await closed(outsider[0], 2)
            insider = await connect(server.port, "127.0.0.2")
            ok = await acked(*insider, "c1")
            insider[1].close()
            outsider[1].close()
            return refused, ok, server.stats, sink
        finally:
            await server.stop()

    refused, ok, stats, sink = asyncio.run(main())
    assert refused and ok
    assert stats.errors["source_not_allowed"] == 1 and stats.connections_refused == 1
    assert len(sink.messages) == 1


def test_allowed_networks_from_the_command_line_and_a_bad_value() -> None:
    from qwen_fluent.config import ConfigError, load

    config = load(flags={"allowed_networks": "10.0.0.0/8, 192.168.1.7"}, environ={})
    assert [str(n) for n in config.server.allowed_networks] == ["10.0.0.0/8", "192.168.1.7/32"]
    with pytest.raises(ConfigError, match="--allowed-networks must list networks"):
        load(flags={"allowed_networks": "10.0.0.0/8, nope"}, environ={})


def test_refusals_are_all_counted_and_their_log_is_sampled(caplog) -> None:
    """50 refused connections: 50 in the counter, the first 5 in the log and no more within the minute."""
    import ipaddress

    async def main():
        server, _ = await start_server(allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),))
        try:
            for _ in range(50):
                reader, writer = await connect(server.port, "127.0.0.3")
                await closed(reader, 2)
                writer.close()
            return server.stats
        finally:
            await server.stop()

    caplog.set_level(logging.WARNING, logger=LOGGER)
    stats = asyncio.run(main())
    assert stats.errors["source_not_allowed"] == 50 and stats.connections_refused == 50
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refusing connection")]
    assert len(lines) == 5 and lines[-1].endswith("from now on at most one line every 60 s for this reason")
