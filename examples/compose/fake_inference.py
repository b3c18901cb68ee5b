#!/usr/bin/env python3
"""A stand-in LLM inference server for the one-machine demo: it only writes logs.

It writes what a vLLM-style server prints, in the file format and at the
place the kubelet would put it, so that the demo's Fluent Bit runs the real
pipeline (tail, ``cri`` multiline parser, kubernetes filter) on it:

* one JSON line per finished request (the fields the article's server logs:
  request_id, path, input_tokens, output_tokens, total_time_ms,
  queue_time_ms, inference_time_ms, gpu_memory_mb, status, plus model and
  time_to_first_token_ms), with a realistic mix of statuses;
* vLLM's periodic engine stats line every ``--stats-every`` requests;
* now and then a plain log line at info, warning or error level.

Lines go to ``<dir>/llm-inference-0_demo_vllm-<id>.log`` in the CRI format
(``<RFC 3339 time> stdout F <line>``), which is what ``/var/log/containers``
holds on a containerd node; ``kube-meta/demo_llm-inference-0.meta`` beside
this script is the pod that file belongs to.

Standard library only, so ``python:3.12-slim`` runs it as is. The tests reuse
:func:`lines` to feed the receiver the same records.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

#: The pod the demo pretends to be (must match kube-meta/demo_llm-inference-0.meta).
NAMESPACE = "demo"
POD = "llm-inference-0"
CONTAINER = "vllm"
CONTAINER_ID = "5f0c3e1d2b4a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
LOG_NAME = f"{POD}_{NAMESPACE}_{CONTAINER}-{CONTAINER_ID}.log"
MODEL = "qwen2.5-7b-instruct"

#: Rotate the log file past this size, as kubelet does (its default is 10 MiB).
ROTATE_BYTES = 10 * 1024 * 1024

PATHS = ("/v1/chat/completions", "/v1/completions")
#: (status, http_status, error, weight): mostly success, a few of every failure kind.
OUTCOMES = (
    ("success", 200, None, 90),
    ("error", 500, "CUDA out of memory", 3),
    ("timeout", 504, "request timed out", 2),
    ("client_error", 400, "context length exceeded", 4),
    ("cancelled", 499, "client disconnected", 1),
)
LOG_LINES = (
    ("INFO", "Received request {rid}: prompt length {n}"),
    ("WARNING", "Sequence group {rid} is preempted by PreemptionMode.RECOMPUTE"),
    ("ERROR", "Error in request {rid}: CUDA out of memory. Tried to allocate 2.00 GiB"),
)


def request_record(rng: random.Random, now: float, n: int) -> dict:
    """One finished request, as the server logs it."""
    status, http_status, error, _ = rng.choices(OUTCOMES, weights=[o[3] for o in OUTCOMES])[0]
    input_tokens = int(rng.lognormvariate(6.5, 0.8))
    output_tokens = 0 if status in ("client_error",) else max(1, int(rng.lognormvariate(5.3, 0.7)))
    queue_ms = int(rng.expovariate(1 / 80))
    ttft_ms = int(40 + input_tokens * 0.05 + rng.expovariate(1 / 30))
    inference_ms = 0 if status == "client_error" else int(ttft_ms + output_tokens * rng.uniform(8, 14))
    record = {
        "timestamp": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request_id": f"req_{n:08d}",
        "method": "POST",
        "path": rng.choice(PATHS),
        "model": MODEL,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_time_ms": queue_ms + inference_ms,
        "queue_time_ms": queue_ms,
        "inference_time_ms": inference_ms,
        "gpu_memory_mb": 18432 + rng.randrange(0, 2048),
        "status": status,
        "http_status": http_status,
    }
    if status == "success":
        record["time_to_first_token_ms"] = ttft_ms
    if error:
        record["error"] = error
    return record


def stats_line(rng: random.Random, now: float) -> str:
    """vLLM (v1 engine) engine stats line, as its logger prints it."""
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%m-%d %H:%M:%S")
    return (
        f"INFO {stamp} [loggers.py:116] Engine 000: Avg prompt throughput: {rng.uniform(500, 3000):.1f} tokens/s, "
        f"Avg generation throughput: {rng.uniform(30, 400):.1f} tokens/s, Running: {rng.randrange(1, 16)} reqs, "
        f"Waiting: {rng.randrange(0, 4)} reqs, GPU KV cache usage: {rng.uniform(5, 60):.1f}%, "
        f"Prefix cache hit rate: {rng.uniform(0, 40):.1f}%"
    )


def log_line(rng: random.Random, now: float, n: int) -> str:
    """A plain log line with a level, in vLLM's logging format."""
    level, template = rng.choice(LOG_LINES)
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%m-%d %H:%M:%S")
    return f"{level} {stamp} [serving_chat.py:212] " + template.format(rid=f"req_{n:08d}", n=rng.randrange(10, 4000))


def lines(seed: int = 0, start: float | None = None, stats_every: int = 20, log_every: int = 7) -> Iterator[tuple[float, str]]:
    """(time, line) pairs forever: requests, with a stats line and a log line mixed in."""
    rng = random.Random(seed)
    now = time.time() if start is None else start
    n = 0
    while True:
        n += 1
        yield now, json.dumps(request_record(rng, now, n), separators=(",", ":"))
        if n % stats_every == 0:
            yield now, stats_line(rng, now)
        if n % log_every == 0:
            yield now, log_line(rng, now, n)
        now += 0.05


def cri_line(when: float, line: str) -> str:
    """A line as containerd writes it to the container's log file (full line, stdout)."""
    stamp = datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    return f"{stamp} stdout F {line}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/log/containers", help="where to write the container log file")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many lines (default: run forever)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    path = Path(args.dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("a", encoding="utf-8")
    written = 0
    for _, line in lines(args.seed):
        out.write(cri_line(time.time(), line))
        out.flush()
        written += 1
        if args.count and written >= args.count:
            break
        if out.tell() > ROTATE_BYTES:
            out.close()
            path.replace(path.with_suffix(".log.1"))
            out = path.open("a", encoding="utf-8")
        if not line.startswith("{"):
            continue
        time.sleep(1.0 / args.rate)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
