"""The receiver end to end on one core: bytes -> Forward core -> normaliser -> metrics.

    python3 bench/bench_pipeline.py [--records 200000] [--chunk 1000] [--pods 20]

Two figures:

* in process: Fluent Bit-shaped Forward messages (the kubernetes filter's
  envelope with ``Merge_Log On``, EventTime stamps, chunk ids, 20 pods) fed
  to one ForwardConnection in 256 KiB reads, each message handed to the same
  MetricsSink the server uses, acked; plus one scrape at the end. This is
  the per-record cost the issue measures against its 250k records/s target.
* over TCP: the real ForwardServer on loopback, fed by a client process that
  replays the same bytes and reads the acks, timed from the first byte to
  the last ack. The client runs on the second core.

The garbage collector is tuned as ``qwen-fluent serve`` tunes it (``tune_gc``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import socket
import struct
import time

import msgpack
from prometheus_client import CollectorRegistry, generate_latest

from qwen_fluent.app import tune_gc
from qwen_fluent.forward import NEED_DATA, ForwardConnection, Message
from qwen_fluent.metrics import LLMMetrics, ReceiverCollector
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser
from qwen_fluent.server import ForwardServer, ServerConfig
from qwen_fluent.stats import ReceiverStats

STATUSES = ["success"] * 95 + ["error"] * 3 + ["client_error"] * 2


def record(rng: random.Random, i: int, pods: int) -> dict:
    pod = rng.randrange(pods)
    total = rng.lognormvariate(0.3, 0.8) * 1000
    queue = total * rng.random() * 0.1
    return {
        "time": "2025-04-05T10:23:45.123456789Z", "stream": "stdout", "_p": "F",
        "timestamp": "2025-04-05T10:23:45Z", "request_id": f"req_{i:012d}", "method": "POST",
        "path": rng.choice(["/v1/chat/completions", "/v1/completions"]),
        "input_tokens": rng.randrange(16, 8192), "output_tokens": rng.randrange(1, 1024),
        "total_time_ms": round(total, 1), "queue_time_ms": round(queue, 1),
        "inference_time_ms": round(total - queue, 1), "gpu_memory_mb": 18432,
        "status": rng.choice(STATUSES),
        "kubernetes": {
            "pod_name": f"llm-inference-7d9f8b6c5-{pod:05d}", "namespace_name": "ml-serving",
            "container_name": "vllm", "host": "gpu-node-01",
            "labels": {"app.kubernetes.io/name": "llm-inference", "model": "qwen2.5-7b-instruct"},
        },
    }


def stream(records: int, chunk: int, pods: int) -> bytes:
    rng = random.Random(7)
    out = []
    now = int(time.time())
    for start in range(0, records, chunk):
        entries = [
            [msgpack.ExtType(0, struct.pack(">II", now, i)), record(rng, start + i, pods)]
            for i in range(min(chunk, records - start))
        ]
        out.append(msgpack.packb(["kube.var.log.containers", entries, {"chunk": f"c{start}", "size": len(entries)}]))
    return b"".join(out)


def pipeline() -> tuple[MetricsSink, CollectorRegistry, ReceiverStats]:
    stats = ReceiverStats()
    metrics = LLMMetrics()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    registry.register(ReceiverCollector(stats))
    return MetricsSink(Normaliser(), metrics, stats), registry, stats


def in_process(data: bytes, records: int) -> None:
    sink, registry, stats = pipeline()
    conn = ForwardConnection()
    step = 256 * 1024
    t0 = time.perf_counter()
    for offset in range(0, len(data), step):
        conn.receive_data(data[offset : offset + step])
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, Message):
                sink(event)
                conn.ack(event)
    t1 = time.perf_counter()
    body = generate_latest(registry)
    t2 = time.perf_counter()
    assert stats.records["accepted"] == records, stats.records
    print(f"in process : {records / (t1 - t0):10,.0f} records/s  {(t1 - t0) / records * 1e6:6.2f} us/record"
          f"   (scrape after: {(t2 - t1) * 1e3:.1f} ms, {len(body) / 1024:.0f} KiB)")


def _client(port: int, data: bytes, acks: int, out) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        s.sendall(data)
        unpacker = msgpack.Unpacker()
        got = 0
        while got < acks:
            unpacker.feed(s.recv(65536))
            got += sum(1 for _ in unpacker)
        out.put(time.perf_counter() - t0)


def over_tcp(data: bytes, records: int, chunk: int) -> None:
    sink, _, stats = pipeline()

    async def main() -> float:
        server = ForwardServer(ServerConfig(host="127.0.0.1", port=0), sink, stats)
        await server.start()
        out = multiprocessing.Queue()
        acks = (records + chunk - 1) // chunk
        client = multiprocessing.Process(target=_client, args=(server.port, data, acks, out))
        client.start()
        loop = asyncio.get_running_loop()
        seconds = await loop.run_in_executor(None, out.get)
        client.join()
        await server.stop()
        return seconds

    seconds = asyncio.run(main())
    assert stats.records["accepted"] == records, stats.records
    print(f"over TCP   : {records / seconds:10,.0f} records/s  {seconds / records * 1e6:6.2f} us/record")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=1000, help="records per Forward message")
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args()
    data = stream(args.records, args.chunk, args.pods)
    tune_gc()  # as `qwen-fluent serve` does
    print(f"{args.records:,} records, {len(data) / 2**20:.1f} MiB, {args.chunk} per message, {args.pods} pods")
    in_process(data, args.records)
    over_tcp(data, args.records, args.chunk)


if __name__ == "__main__":
    main()
