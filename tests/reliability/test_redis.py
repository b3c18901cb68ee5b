"""Two real receivers sharing one real Redis: a chunk resent to the other replica is counted once in the sum;
a Redis that does not answer withholds the ack, and the resend is counted once it answers again."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.reliability.harness import RedisServer, Serve, total, value
from tests.reliability.test_restart import TAG, batch, counted
from tests.support.forward import ForwardClient


@pytest.fixture
def redis_server() -> Any:
    with RedisServer() as server:
        yield server


def send(serve: Serve, chunk: str, entries: list[Any], packed: bool = True) -> None:
    with ForwardClient("127.0.0.1", serve.forward_port) as client:
        client.send(TAG, entries, chunk=chunk, packed=packed)


def test_a_chunk_resent_to_another_replica_is_counted_once_in_the_sum(redis_server: RedisServer) -> None:
    rng = random.Random(3)
    chunks = [(f"c{k}", batch(rng, 25, k * 25)) for k in range(6)]
    with Serve("--redis-url", redis_server.url) as a, Serve("--redis-url", redis_server.url) as b:
        for chunk, entries in chunks[:3]:
            send(a, chunk, entries)
        for chunk, entries in chunks[3:]:
            send(b, chunk, entries)
        # Every ack lost: each chunk resent, to the other replica.
        for chunk, entries in chunks[:3]:
            send(b, chunk, entries)
        for chunk, entries in chunks[3:]:
            send(a, chunk, entries)
        sa, sb = a.settled(), b.settled()
    assert counted(sa) + counted(sb) == 150
    assert total(sa, "qwen_request_duration_seconds_count") + total(sb, "qwen_request_duration_seconds_count") == 150
    for s in (sa, sb):
        assert value(s, "qwen_fluent_duplicate_messages_total", source="shared_store") == 3
        assert value(s, "qwen_fluent_duplicate_records_total", source="shared_store") == 75
        assert value(s, "qwen_fluent_duplicate_messages_total", source="window") == 0


def test_the_same_replica_recognises_its_own_resend_without_the_store(redis_server: RedisServer) -> None:
    entries = batch(random.Random(4), 10, 0)
    with Serve("--redis-url", redis_server.url) as a:
        send(a, "c1", entries)
        send(a, "c1", entries)  # a new connection: a retry
        s = a.settled()
    assert counted(s) == 10
    assert value(s, "qwen_fluent_duplicate_messages_total", source="window") == 1


def test_an_unreachable_store_withholds_the_ack_and_the_resend_counts_once(redis_server: RedisServer) -> None:
    entries = batch(random.Random(6), 10, 0)
    with Serve("--redis-url", redis_server.url) as a, Serve("--redis-url", redis_server.url) as b:
        send(a, "warm", batch(random.Random(7), 1, 100))  # both connected once
        send(b, "warm-b", batch(random.Random(8), 1, 101))
        redis_server.stop()
        with pytest.raises(ConnectionError, match="before acking"):
            send(a, "c1", entries)
        s = a.settled()
        assert counted(s) == 1  # nothing of c1
        assert value(s, "qwen_fluent_errors_total", reason="duplicate_store_unavailable") == 1
        assert sum(value(s, "qwen_fluent_duplicate_store_errors_total", reason=r)
                   for r in ("connection", "timeout", "error")) == 1
        # Within the back-off the next message is refused without trying the store.
        with pytest.raises(ConnectionError, match="before acking"):
            send(a, "c1", entries)
        assert value(a.settled(), "qwen_fluent_duplicate_store_errors_total", reason="backing_off") == 1
        redis_server.start()  # same port
        time.sleep(1.1)  # past the back-off (config.REDIS_RETRY_AFTER)
        send(b, "c1", entries)  # the client's resend reaches the other replica: counted there
        send(a, "c1", entries)  # and once more to the first: a duplicate
        sa, sb = a.settled(), b.settled()
    assert counted(sa) + counted(sb) == 12
    assert value(sa, "qwen_fluent_duplicate_messages_total", source="shared_store") == 1
