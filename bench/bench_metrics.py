"""How much the metrics cost per record and per scrape. Prints figures; asserts nothing.

Run: ``python bench/bench_metrics.py [--records 200000] [--series 2000]``.

Per record (µs, best of 5 runs over the same pre-built events):

1. ``LLMMetrics.observe`` -- our aggregator: one dict lookup of the label
   tuple, slots updated in place, histograms by ``bisect``.
2. The prometheus-client baseline: the same families as ``Counter`` and
   ``Histogram`` objects (requests, 5 duration histograms with our buckets,
   2 token histograms, 2 token counters), updated per record with
   ``.labels(...).inc()/.observe()``, as a straightforward exporter would.
3. ``MetricsSink`` on raw records: the normaliser plus the aggregator, what
   the Forward server's sink costs per record (Forward decoding excluded:
   bench/bench_forward.py measures that).

Per scrape: collect + render of ``--series`` request label sets (the
``max_series`` default) in both exposition formats, the cost of one /metrics
response at the cap.
"""

from __future__ import annotations

import argparse
import random
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from qwen_fluent.forward.events import Entry, Message, Mode
from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser, RequestEvent, Source
from qwen_fluent.stats import ReceiverStats

PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
STATUSES = ("success",) * 8 + ("error", "timeout")


def events(n: int, pods: int, seed: int = 1) -> list[RequestEvent]:
    rng = random.Random(seed)
    sources = [Source("ml-serving", f"llm-inference-{i}", "vllm", "node-1") for i in range(pods)]
    out = []
    for i in range(n):
        total = rng.lognormvariate(0.3, 0.9)
        queue = total * rng.random() * 0.2
        out_tok = rng.randint(1, 2048)
        out.append(RequestEvent(
            rng.choice(STATUSES), rng.choice(PATHS), "qwen2.5-7b-instruct", f"req-{i}", "POST",
            rng.randint(16, 8000), out_tok, total, queue, total - queue, queue + 0.05,
            (total - queue - 0.05) / out_tok, 18432.0 * 2**20, 200, "", 1.7e9 + i, rng.choice(sources)))
    return out


def best_of(runs: int, fn) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_aggregator(evs: list[RequestEvent]) -> float:
    def run() -> None:
        observe = LLMMetrics(MetricsConfig()).observe
        for ev in evs:
            observe(ev)
    return best_of(5, run) / len(evs) * 1e6


def bench_client_baseline(evs: list[RequestEvent]) -> float:
    cfg = MetricsConfig()
    names = ("status", "path", "model", "namespace", "pod", "container")

    def run() -> None:
        reg = CollectorRegistry()
        requests = Counter("qwen_requests", "", names, registry=reg)
        hists = [Histogram(n, "", names, buckets=b, registry=reg) for n, b in (
            ("qwen_request_duration_seconds", cfg.duration_buckets),
            ("qwen_request_queue_duration_seconds", cfg.duration_buckets),
            ("qwen_request_inference_duration_seconds", cfg.duration_buckets),
            ("qwen_time_to_first_token_seconds", cfg.ttft_buckets),
            ("qwen_time_per_output_token_seconds", cfg.tpot_buckets),
            ("qwen_request_input_tokens", cfg.input_token_buckets),
            ("qwen_request_output_tokens", cfg.output_token_buckets),
        )]
        d, q, inf, ttft, tpot, itok, otok = hists
        tin = Counter("qwen_input_tokens", "", names, registry=reg)
        tout = Counter("qwen_output_tokens", "", names, registry=reg)
        for ev in evs:
            s = ev.source
            labels = (ev.status, ev.path, ev.model, s.namespace, s.pod, s.container)
            requests.labels(*labels).inc()
            d.labels(*labels).observe(ev.total_s)
            q.labels(*labels).observe(ev.queue_s)
            inf.labels(*labels).observe(ev.inference_s)
            ttft.labels(*labels).observe(ev.ttft_s)
            tpot.labels(*labels).observe(ev.tpot_s)
            itok.labels(*labels).observe(ev.input_tokens)
            otok.labels(*labels).observe(ev.output_tokens)
            tin.labels(*labels).inc(ev.input_tokens)
            tout.labels(*labels).inc(ev.output_tokens)
    return best_of(5, run) / len(evs) * 1e6


def bench_sink(n: int) -> float:
    records = []
    rng = random.Random(2)
    for i in range(n):
        total = rng.randint(50, 20000)
        queue = rng.randint(0, total // 5)
        records.append(Entry(1.7e9 + i, {
            "timestamp": "2025-04-05T10:23:45Z", "request_id": f"req-{i}", "method": "POST",
            "path": rng.choice(PATHS), "input_tokens": rng.randint(16, 8000), "output_tokens": rng.randint(1, 2048),
            "total_time_ms": total, "queue_time_ms": queue, "inference_time_ms": total - queue,
            "gpu_memory_mb": 18432, "status": rng.choice(STATUSES),
            "kubernetes": {"pod_name": f"llm-inference-{i % 20}", "namespace_name": "ml-serving",
                           "container_name": "vllm", "host": "node-1", "labels": {"model": "qwen2.5-7b-instruct"}},
        }))
    message = Message("kube.var.log.containers.x", records, Mode.FORWARD, None, {}, 0, {})

    def run() -> None:
        MetricsSink(Normaliser(), LLMMetrics(MetricsConfig()), ReceiverStats())(message)
    return best_of(5, run) / n * 1e6


def bench_scrape(series: int) -> tuple[int, float, float, int]:
    metrics = LLMMetrics(MetricsConfig())
    pods = max(1, series // (len(PATHS) * 2))
    for ev in events(series * 20, pods, seed=3):
        metrics.observe(ev._replace(status="success" if ev.status == "success" else "error"))
    reg = CollectorRegistry()
    reg.register(metrics)
    labelsets = len(metrics._requests)
    text = best_of(3, lambda: generate_latest(reg))
    om = best_of(3, lambda: generate_openmetrics(reg))
    size = len(generate_latest(reg))
    return labelsets, text, om, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--series", type=int, default=2000)
    args = parser.parse_args()

    evs = events(args.records, pods=20)
    ours = bench_aggregator(evs)
    print(f"LLMMetrics.observe, request event:        {ours:6.2f} us/record  ({1e6 / ours:,.0f} records/s)")
    base = bench_client_baseline(evs[: max(1, args.records // 4)])
    print(f"prometheus-client Counter/Histogram:      {base:6.2f} us/record  ({1e6 / base:,.0f} records/s)"
          f"  ({base / ours:.1f}x ours)")
    sink = bench_sink(max(1, args.records // 4))
    print(f"MetricsSink (normalise + observe), raw:   {sink:6.2f} us/record  ({1e6 / sink:,.0f} records/s)")
    labelsets, text, om, size = bench_scrape(args.series)
    print(f"scrape of {labelsets} request label sets ({size / 1e6:.1f} MB text): "
          f"text {text * 1e3:.0f} ms, OpenMetrics {om * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
