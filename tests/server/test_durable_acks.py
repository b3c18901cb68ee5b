"""Acks after the checkpoint: the real Forward server over real sockets, with a ``durable`` it waits on.

The ``durable`` here is a :class:`Gate`: each call returns a future that the test resolves (or
fails) when it chooses, which is the contract of ``Checkpointer.durable`` (resolved in call order
once a checkpoint is on disk). The real checkpointer behind a real ``qwen-fluent serve --state-dir``
is exercised in tests/reliability/test_faults.py.
"""

from __future__ import annotations

import asyncio

import msgpack

from qwen_fluent.server import ForwardServer, ServerConfig
from qwen_fluent.server.forward import CHECKPOINT_FAILED, MAX_PENDING_ACKS
from qwen_fluent.stats import ReceiverStats

from .conftest import Collect, read_for


class Gate:
    """``durable()`` for the server: futures resolved or failed by the test, in call order."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    def __call__(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def open(self, n: int | None = None) -> None:
        for f in self.futures[:n]:
            if not f.done():
                f.set_result(None)

    def fail(self) -> None:
        for f in self.futures:
            if not f.done():
                f.set_exception(OSError(28, "No space left on device"))


def message(i: int, chunk: bool = True, pad: int = 0) -> bytes:
    option = {"chunk": f"c{i}"} if chunk else {}
    return msgpack.packb(["llm.a", [[1_700_000_000 + i, {"i": i, "pad": "x" * pad}]], option], use_bin_type=True)


def acks(data: bytes) -> list[str]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return [reply["ack"] for reply in unpacker]


async def start(gate: Gate) -> tuple[ForwardServer, Collect]:
    sink = Collect()
    server = ForwardServer(ServerConfig(host="127.0.0.1", port=0), sink, ReceiverStats(), durable=gate)
    await server.start()
    return server, sink


def test_an_ack_waits_for_its_checkpoint_and_acks_stay_in_order() -> None:
    async def main() -> None:
        gate = Gate()
        server, sink = await start(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join(message(i) for i in range(3)) + message(99, chunk=False))
        await writer.drain()
        assert await read_for(reader, 0.3) == b""  # counted, but no checkpoint yet: no ack
        assert len(sink.messages) == 4 and len(gate.futures) == 3  # the ack-less message asks for none
        gate.futures[1].set_result(None)  # out of order: the first is still waiting, so nothing is written
        assert await read_for(reader, 0.2) == b""
        gate.open(1)
        assert acks(await read_for(reader, 0.3)) == ["c0", "c1"]
        gate.open()
        assert acks(await read_for(reader, 0.3)) == ["c2"]
        assert server.stats.acks == 3
        writer.close()
        await server.stop()

    asyncio.run(main())


def test_a_failed_checkpoint_closes_without_the_ack() -> None:
    async def main() -> None:
        gate = Gate()
        server, _ = await start(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(message(0) + message(1))
        await writer.drain()
        await asyncio.sleep(0.1)
        gate.open(1)
        gate.fail()
        assert acks(await read_for(reader, 2)) == ["c0"]  # then closed: the read ended before 2 s
        assert reader.at_eof()
        assert server.stats.errors[CHECKPOINT_FAILED] == 1 and server.stats.acks == 1
        # Another connection is unaffected.
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        w2.write(message(2))
        await w2.drain()
        await asyncio.sleep(0.1)
        gate.open()
        assert acks(await read_for(r2, 0.3)) == ["c2"]
        w2.close()
        await server.stop()

    asyncio.run(main())


def test_too_many_waiting_acks_stop_reading_until_the_checkpoint() -> None:
    """A pipelining client is paused at MAX_PENDING_ACKS waiting acks; nothing is lost or reordered."""
    total = MAX_PENDING_ACKS * 4

    async def main() -> None:
        gate = Gate()
        server, sink = await start(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for i in range(total):  # 8 KiB each: 2 MiB, more than one read of asyncio's (256 KiB) holds
            writer.write(message(i, pad=8192))
        await asyncio.sleep(0.3)
        taken = len(sink.messages)
        # One read may hold more than the bound (all of it is applied), but reading stopped after it.
        assert MAX_PENDING_ACKS <= taken < total
        await asyncio.sleep(0.2)
        assert len(sink.messages) == taken  # paused: nothing more was read
        got: list[str] = []
        while len(got) < total:
            gate.open()
            got += acks(await read_for(reader, 0.05))
        assert got == [f"c{i}" for i in range(total)]
        assert [m.entries[0].record["i"] for m in sink.messages] == list(range(total))
        writer.close()
        await server.stop()

    asyncio.run(main())


def test_stop_waits_for_the_last_checkpoint_then_closes() -> None:
    async def main() -> None:
        gate = Gate()
        server, _ = await start(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(message(0))
        await writer.drain()
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.2)
        assert not stopping.done()  # the ack is owed: the connection stays open for it
        gate.open()
        await asyncio.wait_for(stopping, 2)
        assert acks(await read_for(reader, 1)) == ["c0"] and reader.at_eof()
        assert server.stats.errors.get("shutdown", 0) == 0

    asyncio.run(main())


def test_stop_gives_up_on_a_checkpoint_that_never_comes_within_the_grace() -> None:
    async def main() -> None:
        gate = Gate()
        server, _ = await start(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(message(0))
        await writer.drain()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(server.stop(grace=0.3), 2)
        assert await read_for(reader, 1) == b""  # dropped without the ack: the client resends
        assert server.stats.errors["shutdown"] == 1
        gate.open()  # resolving later writes nothing to the closed connection
        await asyncio.sleep(0.05)
        assert server.stats.acks == 0

    asyncio.run(main())


def test_end_of_stream_with_acks_owed_keeps_the_half_open_connection_for_them() -> None:
    async def main() -> None:
        gate = Gate()
        server, _ = await start(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(message(0))
        writer.write_eof()  # the client is done sending and waits for its ack
        await asyncio.sleep(0.2)
        gate.open()
        assert acks(await read_for(reader, 1)) == ["c0"] and reader.at_eof()
        await server.stop()

    asyncio.run(main())


def test_without_durable_acks_are_written_at_once() -> None:
    async def main() -> None:
        sink = Collect()
        server = ForwardServer(ServerConfig(host="127.0.0.1", port=0), sink, ReceiverStats())
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(message(0))
        assert acks(await reader.read(100)) == ["c0"]
        writer.close()
        await server.stop()

    asyncio.run(main())

