"""How fast the record normaliser is, per shape of record. Prints figures; asserts nothing.

Run: ``python bench/bench_normalise.py [--seconds 1.0]``. Each case is timed
with :mod:`timeit` (best of 5 repeats) on records shaped like Fluent Bit
4.2.8's output (see tests/records/data/): the flat request log (Merge_Log),
the CRI envelope with its kubernetes map, the docker json-file ``log`` string
that needs ``json.loads``, a vLLM stats line and a plain level line.
"""

from __future__ import annotations

import argparse
import json
import timeit

from qwen_fluent.records import Normaliser

REQUEST = {
    "timestamp": "2025-04-05T10:23:45Z",
    "request_id": "req_abc123xyz",
    "method": "POST",
    "path": "/v1/chat/completions",
    "input_tokens": 1240,
    "output_tokens": 320,
    "total_time_ms": 1876,
    "queue_time_ms": 120,
    "inference_time_ms": 1756,
    "gpu_memory_mb": 18432,
    "status": "success",
}
KUBERNETES = {
    "pod_name": "llm-inference-7d9f8b6c5-x2k4p",
    "namespace_name": "ml-serving",
    "pod_id": "3f1c2b4a-1111-2222-3333-123089695663",
    "labels": {"app.kubernetes.io/name": "llm-inference", "pod-template-hash": "7d9f8b6c5", "model": "llama-3-8b-instruct"},
    "annotations": {"prometheus.io/scrape": "true", "gpu.vendor/type": "nvidia-h100"},
    "host": "gpu-node-01",
    "pod_ip": "10.244.1.23",
    "container_name": "vllm",
    "docker_id": "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2",
    "container_hash": "vllm/vllm-openai@sha256:" + "ab" * 32,
    "container_image": "vllm/vllm-openai:v0.8.3",
}
TAG = "kube.var.log.containers.llm-inference-7d9f8b6c5-x2k4p_ml-serving_vllm-" + "a1b2c3d4e5f6" * 5 + "a1b2.log"

CASES = {
    "flat request log (Merge_Log at root)": dict(REQUEST),
    "CRI envelope + kubernetes map": {
        "time": "2025-04-05T10:23:45.123456789Z", "stream": "stdout", "_p": "F", **REQUEST, "kubernetes": KUBERNETES,
    },
    "docker 'log' string (json.loads)": {
        "log": json.dumps(REQUEST) + "\n", "stream": "stdout", "time": "2025-04-05T10:23:45.123456789Z",
        "kubernetes": KUBERNETES,
    },
    "vLLM stats line": {
        "time": "2025-04-05T10:23:47.000000000Z", "stream": "stderr", "_p": "F",
        "log": "INFO 04-05 10:23:47 [loggers.py:116] Engine 000: Avg prompt throughput: 1240.0 tokens/s, "
        "Avg generation throughput: 55.3 tokens/s, Running: 3 reqs, Waiting: 0 reqs, "
        "GPU KV cache usage: 12.5%, Prefix cache hit rate: 0.0%",
        "kubernetes": KUBERNETES,
    },
    "plain level line": {
        "time": "2025-04-05T10:23:47.000000000Z", "stream": "stderr", "_p": "F",
        "log": 'INFO:     10.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        "kubernetes": KUBERNETES,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="target time per repeat")
    args = parser.parse_args()
    normalise = Normaliser()
    print(f"{'case':40} {'records/s':>12} {'us/record':>10}  outcome")
    for name, record in CASES.items():
        outcome = normalise(record, TAG)
        timer = timeit.Timer(lambda: normalise(record, TAG))
        count, elapsed = timer.autorange()
        number = max(1, int(count * args.seconds / max(elapsed, 1e-9)))
        best = min(timer.repeat(repeat=5, number=number)) / number
        print(f"{name:40} {1 / best:12,.0f} {best * 1e6:10.2f}  {type(outcome).__name__}")


if __name__ == "__main__":
    main()
