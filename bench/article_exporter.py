"""The reference exporter, built the article's way: JSON lines in, prometheus-client objects out.

    python3 bench/article_exporter.py --port 9100 < requests.jsonl

This is the design the issue compares qwen-fluent against, written as
plainly as the article writes it: read the application's JSON log lines
from stdin, ``json.loads`` each one, and update five prometheus-client
objects per record (the status counter, two histograms, two token
counters), served by prometheus-client's own ``start_http_server``.

For ``bench/run.py`` it says ``ready`` on stderr once /metrics is served,
and ``done <records>`` on stderr when stdin ends; it then keeps serving
/metrics until it is terminated, so that its counts can be read back.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from prometheus_client import Counter, Histogram, start_http_server

#: Latency buckets in seconds, spanning a short completion to a long
#: generation (the article's dashboard reads p50/p95/p99 from them).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Queue time is usually short; finer buckets at the low end.
QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("llm_requests_total", "Inference requests by status.", ["status"])
LATENCY = Histogram("llm_request_latency_seconds", "End-to-end request latency.", buckets=LATENCY_BUCKETS)
QUEUE = Histogram("llm_queue_time_seconds", "Time a request waited in the queue.", buckets=QUEUE_BUCKETS)
INPUT_TOKENS = Counter("llm_input_tokens_total", "Prompt tokens processed.")
OUTPUT_TOKENS = Counter("llm_output_tokens_total", "Tokens generated.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()

    start_http_server(args.port, addr=args.host)
    print("ready", file=sys.stderr, flush=True)

    count = 0
    for line in sys.stdin:
        record = json.loads(line)
        REQUESTS.labels(status=record["status"]).inc()
        LATENCY.observe(record["total_time_ms"] / 1000)
        QUEUE.observe(record["queue_time_ms"] / 1000)
        INPUT_TOKENS.inc(record["input_tokens"])
        OUTPUT_TOKENS.inc(record["output_tokens"])
        count += 1

    print(f"done {count}", file=sys.stderr, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
