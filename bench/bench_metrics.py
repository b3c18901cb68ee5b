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

Per scrape, at ``--series`` request label sets (the ``max_series``
default), both exposition formats, best of 3:

1. as served: prometheus-client's ``generate_latest`` on a
   ``CollectorRegistry`` against our ``generate()`` on our ``Registry``
   (collect + render; ``LLMMetrics.expose`` when it exists, else the
   generic path), and the ratio;
2. render only, on the same families collected once: prometheus-client,
   our generic path (``Writer.metric``), and our fast path (the same
   families replayed through ``Writer.histogram``/``counter``/... with label
   blocks built beforehand, as a collector's ``expose`` does), and the
   ratios to prometheus-client;
3. the longest pause a second Python thread sees during a render (the
   receiver's event loop during a scrape), beside a pure-Python loop's.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from qwen_fluent.forward.events import Entry, Message, Mode
from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.metrics.exposition import Format, Registry, generate, render
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser, RequestEvent, Source
from qwen_fluent.stats import ReceiverStats

# The fast-method replay is the exposition tests' own (tests/support/replay.py): run from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.replay import Replay  # noqa: E402

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


class Frozen:
    """A collector's families, collected once: every renderer then formats the same input."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def longest_stall(work: Callable[[], object]) -> float:
    """Seconds of the longest pause a second, busy Python thread sees while ``work`` runs in this one.

    The GIL passes between threads every ``sys.getswitchinterval()`` (5 ms)
    unless one C call holds it longer; on a loaded machine the OS adds its
    own pauses, hence the pure-Python reference printed beside it.
    """
    worst = [0.0]
    done = threading.Event()

    def spin() -> None:
        last = time.perf_counter()
        while not done.is_set():
            now = time.perf_counter()
            worst[0] = max(worst[0], now - last)
            last = now

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.05)
    worst[0] = 0.0
    work()
    done.set()
    thread.join()
    return worst[0]


def _python_loop() -> None:
    n = 0
    for i in range(5_000_000):
        n += i


def _serve_like(registry: Registry, fmt: Format) -> None:
    """What /metrics does: render in pieces, gzip them piece by piece."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for piece in render(registry, fmt):
        compressor.compress(piece)
    compressor.flush()


def bench_scrape(series: int) -> None:
    """Print the cost of one scrape at ``series`` request label sets: prometheus-client's renderers against ours."""
    metrics = LLMMetrics(MetricsConfig())
    pods = max(1, series // (len(PATHS) * 2))
    for ev in events(series * 20, pods, seed=3):
        metrics.observe(ev._replace(status="success" if ev.status == "success" else "error"))
    client_registry = CollectorRegistry()
    client_registry.register(metrics)
    ours = Registry()
    ours.register(metrics)
    labelsets = len(metrics._requests)
    path = "LLMMetrics.expose" if hasattr(metrics, "expose") else "generic path (LLMMetrics has no expose yet)"

    t0 = time.perf_counter()
    families = list(metrics.collect())
    collect = time.perf_counter() - t0
    frozen = Frozen(families)
    replay = Registry()
    replay.register(Replay(families))
    text_body = generate_latest(frozen)
    samples = text_body.count(b"\n") - 2 * len(families)
    assert generate(replay, Format.TEXT) == text_body  # same input, same output: a fair comparison

    print(f"scrape of {labelsets} request label sets ({samples:,} samples, {len(text_body) / 1e6:.1f} MB text), "
          "best of 3:")
    rows = [
        ("prometheus-client generate_latest, as served", lambda: generate_latest(client_registry),
         lambda: generate_openmetrics(client_registry)),
        (f"generate(Registry), as served: {path}", lambda: generate(ours, Format.TEXT),
         lambda: generate(ours, Format.OPENMETRICS)),
        ("prometheus-client, render only (same families)", lambda: generate_latest(frozen),
         lambda: generate_openmetrics(frozen)),
        ("Writer.metric, generic path, render only", lambda: generate(frozen, Format.TEXT),
         lambda: generate(frozen, Format.OPENMETRICS)),
        ("Writer fast path, pre-built blocks, render only", lambda: generate(replay, Format.TEXT),
         lambda: generate(replay, Format.OPENMETRICS)),
    ]
    reference: dict[int, tuple[float, float]] = {}
    for i, (name, text_fn, om_fn) in enumerate(rows):
        text, om = best_of(3, text_fn), best_of(3, om_fn)
        base = reference.setdefault(0 if i < 2 else 2, (text, om))
        ratio = "" if i in (0, 2) else f"   ({base[0] / text:5.1f}x, {base[1] / om:5.1f}x faster)"
        print(f"  {name:<66} text {text * 1e3:6.0f} ms   OpenMetrics {om * 1e3:6.0f} ms{ratio}")
    print(f"  (LLMMetrics.collect() alone, building the families: {collect * 1e3:.0f} ms)")
    stalls = [
        ("prometheus-client text", lambda: generate_latest(frozen)),
        ("fast path render + gzip (as /metrics)", lambda: _serve_like(replay, Format.OPENMETRICS)),
        ("pure-Python loop (reference)", _python_loop),
    ]
    print("  longest pause of another Python thread meanwhile: " + ", ".join(
        f"{name} {min(longest_stall(fn) for _ in range(3)) * 1e3:.0f} ms" for name, fn in stalls))


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
    bench_scrape(args.series)


if __name__ == "__main__":
    main()
