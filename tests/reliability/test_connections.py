"""Over real sockets: the server stamps each message with its connection, so the duplicate window tells
a client's resend on a new connection (a retry after a lost ack: counted once) from the same message
sent twice on one connection (two chunks that happen to carry the same records: both counted)."""

from __future__ import annotations

import socket
import time
import urllib.request

import msgpack
from prometheus_client.parser import text_string_to_metric_families

from tests.support.receiver import ReceiverThread

RECORD = {"request_id": "r1", "path": "/v1/chat/completions", "input_tokens": 10, "output_tokens": 5,
          "total_time_ms": 120, "status": "success"}


def message(chunk: str) -> bytes:
    entries = b"".join(msgpack.packb([1_700_000_000 + i, RECORD]) for i in range(3))
    return msgpack.packb(["llm.inference", entries, {"chunk": chunk, "size": 3}])


def send(sock: socket.socket, data: bytes, chunk: str) -> None:
    sock.sendall(data)
    unpacker = msgpack.Unpacker()
    while True:
        unpacker.feed(sock.recv(4096))
        for reply in unpacker:
            assert reply == {"ack": chunk}
            return


def samples(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_same_connection_twice_counts_twice_a_new_connection_counts_once() -> None:
    data = message("c1")
    with ReceiverThread() as receiver:
        with socket.create_connection(("127.0.0.1", receiver.forward_port), timeout=10) as first:
            send(first, data, "c1")
            send(first, data, "c1")  # the same bytes again on the same connection: a new message
        with socket.create_connection(("127.0.0.1", receiver.forward_port), timeout=10) as second:
            send(second, data, "c1")  # the same bytes on a new connection: the client's retry
        got = samples(receiver.metrics_port)
        deadline = time.monotonic() + 10
        while got["qwen_fluent_acks_total"] < 3 and time.monotonic() < deadline:
            # The server counts an ack after writing it: the client may read it and scrape first.
            time.sleep(0.05)
            got = samples(receiver.metrics_port)
    assert got["qwen_requests_total"] == 6
    assert got["qwen_fluent_duplicate_messages_total"] == 1
    assert got["qwen_fluent_duplicate_records_total"] == 3
    assert got["qwen_fluent_acks_total"] == 3
