"""Records/s of ``qwen-fluent serve`` under each durability setting, measured in one run.

Every case is a real ``serve`` process fed the same Kubernetes PackedForward stream
(bench/workload.py) by bench/forward_client.py (acks on, ``--window`` messages in
flight per connection, ``--connections`` connections), so the figure includes what
a user's Fluent Bit would see: the ack latency of the group commit. Cases:

- ``no state dir`` (the reference): acks at once, nothing written to disk;
- ``state dir, acks at once``: ``ack_after_checkpoint = false``: periodic checkpoints only;
- ``state dir, acks after checkpoint``: the default with ``--state-dir`` (group commit of 20 ms);
- the same with ``group_commit_delay`` 0 (the next loop turn), 5 ms and 100 ms.

Cases are interleaved ``--repeat`` times (fresh processes each time) and the fastest run of
each is printed beside the reference's with the ratio. Every run's counter is checked.

    python3 bench/bench_durable.py [--records 100000] [--per-message 100] [--connections 8] [--window 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.forward_client import replay
from bench.workload import KUBERNETES, PACKED, build
from tests.reliability.harness import Serve, total

#: (name, [reliability] TOML lines or None for no state dir)
CASES: list[tuple[str, str | None]] = [
    ("no state dir (reference)", None),
    ("state dir, acks at once", "ack_after_checkpoint = false"),
    ("state dir, acks after checkpoint, 0 ms group", "group_commit_delay = 0.0"),
    ("state dir, acks after checkpoint, 5 ms group", "group_commit_delay = 0.005"),
    ("state dir, acks after checkpoint, 20 ms group (default)", ""),
    ("state dir, acks after checkpoint, 100 ms group", "group_commit_delay = 0.1"),
]


def run_case(toml: str | None, messages: list[bytes], chunks: list[str], records: int, window: int,
             connections: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        flags: list[str] = []
        if toml is not None:
            config = os.path.join(d, "qf.toml")
            with open(config, "w") as f:
                f.write(f"[reliability]\nstate_dir = {os.path.join(d, 'state')!r}\n{toml}\n")
            flags = ["--config", config]
        with Serve(*flags) as serve:
            seconds, acked = replay(serve.forward_port, messages, chunks, window, connections)
            assert acked == len(messages)
            counted = total(serve.scrape(), "qwen_requests_total")
            assert counted == records, (counted, records)
    return records / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--window", type=int, default=1, help="messages in flight per connection")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    stream = build(args.records, args.per_message).streams[(KUBERNETES, PACKED)]
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, toml in CASES:
            rate = run_case(toml, stream.messages, stream.chunks, stream.records, args.window, args.connections)
            best[name] = max(best.get(name, 0.0), rate)
    reference = best[CASES[0][0]]
    print(f"{args.records} records, {args.per_message} per message, {args.connections} connections x "
          f"{args.window} in flight, best of {args.repeat} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"{'setting':58} {'records/s':>10} {'vs reference':>13}")
    for name, _ in CASES:
        print(f"{name:58} {best[name]:10.0f} {best[name] / reference:12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
