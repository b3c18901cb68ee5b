"""How fast the Forward core decodes, per mode: records/s and microseconds per record.

    python3 bench/bench_forward.py [--records 200000] [--chunk 1000]

Feeds whole streams of Fluent Bit-shaped messages (the request record from
the captures, EventTime stamps, chunk ids) to one ForwardConnection in 256 KiB
reads, as the server does, and pulls every event. One core, no sockets: this
is the protocol's own cost, the floor under the end-to-end figure.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import time

import msgpack

from qwen_fluent.forward import NEED_DATA, ForwardConnection, Message

RECORD = {
    "timestamp": "2025-04-05T10:23:45Z", "request_id": "req_abc123xyz", "method": "POST",
    "path": "/v1/chat/completions", "input_tokens": 1240, "output_tokens": 320, "total_time_ms": 1876,
    "queue_time_ms": 120, "inference_time_ms": 1756, "gpu_memory_mb": 18432, "status": "success",
}


def event_time(t: float) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", int(t), int((t % 1) * 1e9)))


def stream(mode: str, records: int, chunk: int) -> bytes:
    out = []
    now = time.time()
    for start in range(0, records, chunk):
        entries = [[event_time(now + i / 1e3), dict(RECORD, request_id=f"req_{start + i}")]
                   for i in range(min(chunk, records - start))]
        options = {"chunk": f"chunk{start}", "size": len(entries)}
        if mode == "forward":
            out.append(msgpack.packb(["llm.inference", entries, options]))
        elif mode == "message":
            out.extend(msgpack.packb(["llm.inference", e[0], e[1], options]) for e in entries)
        else:
            payload = b"".join(msgpack.packb(e) for e in entries)
            if mode == "compressed_packed_forward":
                payload = gzip.compress(payload, 1)
                options["compressed"] = "gzip"
            out.append(msgpack.packb(["llm.inference", payload, options], use_bin_type=True))
    return b"".join(out)


def run(data: bytes) -> tuple[int, float]:
    conn = ForwardConnection()
    count = 0
    step = 256 * 1024
    t0 = time.perf_counter()
    for offset in range(0, len(data), step):
        conn.receive_data(data[offset : offset + step])
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Message):
                count += len(event.entries)
                conn.ack(event)
    return count, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=1000, help="records per Forward message")
    args = parser.parse_args()
    print(f"{'mode':28} {'records/s':>12} {'us/record':>10} {'MB/s':>8}")
    for mode in ("forward", "packed_forward", "compressed_packed_forward", "message"):
        data = stream(mode, args.records, args.chunk)
        best = min((run(data) for _ in range(3)), key=lambda r: r[1])
        count, seconds = best
        assert count == args.records, (mode, count)
        print(f"{mode:28} {count / seconds:12,.0f} {seconds / count * 1e6:10.2f} {len(data) / seconds / 1e6:8.1f}")


if __name__ == "__main__":
    main()
