"""The cost of one /metrics render at N request label sets: prometheus-client's renderers against ours.

    python3 bench/scrape_cost.py [--label-sets 2000] [--records-per-set 3] [--runs 3]

Builds one ``LLMMetrics`` holding exactly ``--label-sets`` request label
sets (pods x paths x statuses, a few records each, through
``LLMMetrics.observe``), registers it in a ``CollectorRegistry`` as
``qwen-fluent serve`` does, and times, on that same registry in the same
process (best of ``--runs``):

* prometheus-client's ``generate_latest`` (Prometheus text 0.0.4);
* prometheus-client's ``openmetrics.exposition.generate_latest``;
* qwen-fluent's own renderer, ``qwen_fluent.metrics.exposition.generate``,
  in both formats, when that module exists.

It also says whether both renderings of each format hold the same samples
(identical bytes, or else equal samples as prometheus-client's parsers read
them): a faster renderer that says something else would not be a fair
comparison.

Prints one JSON object on stdout for ``bench/run.py``; exits 1 when the
registry does not hold the label sets asked for. Run as its own process so
that its peak RSS (``peak_rss_bytes``) is the registry's and the renders',
not the rest of the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.records import RequestEvent, Source

#: Each pod serves two routes and logs successes and errors: 4 label sets a pod.
PATHS = ("/v1/chat/completions", "/v1/completions")
STATUSES = ("success", "error")


def build(label_sets: int, per_set: int, seed: int = 3) -> LLMMetrics:
    """An aggregator holding exactly ``label_sets`` request label sets (a multiple of 4)."""
    combos = len(PATHS) * len(STATUSES)
    pod_count = label_sets // combos
    metrics = LLMMetrics(MetricsConfig())
    rng = random.Random(seed)
    n = 0
    for p in range(pod_count):
        source = Source("ml-serving", f"llm-inference-7d9f8b6c5-{p:05d}", "vllm", f"gpu-node-{p % 4:02d}")
        for path in PATHS:
            for status in STATUSES:
                for _ in range(per_set):
                    total = rng.lognormvariate(0.3, 0.8)
                    queue = total * rng.random() * 0.1
                    out_tokens = rng.randrange(1, 1024)
                    metrics.observe(RequestEvent(
                        status=status, path=path, model="qwen2.5-7b-instruct", request_id=f"req_{n:012d}",
                        method="POST", input_tokens=rng.randrange(16, 8192), output_tokens=out_tokens,
                        total_s=total, queue_s=queue, inference_s=total - queue, ttft_s=queue + 0.05,
                        tpot_s=(total - queue - 0.05) / out_tokens, gpu_memory_bytes=18432 * 2**20,
                        http_status=200 if status == "success" else 500, error_type="",
                        timestamp=1743848625.0 + n, source=source))
                    n += 1
    return metrics


def best_of(runs: int, render: Callable[[], bytes]) -> tuple[float, bytes]:
    """Fastest of ``runs`` renders, in seconds, and the last body rendered."""
    best = float("inf")
    body = b""
    for _ in range(runs):
        t0 = time.perf_counter()
        body = render()
        best = min(best, time.perf_counter() - t0)
    return best, body


def samples(parse: Callable[[str], Any], body: bytes) -> list[tuple]:
    """Every sample of a rendering, sorted, with its family, labels, value and exemplar."""
    out = []
    for family in parse(body.decode()):
        for s in family.samples:
            exemplar = (tuple(sorted(s.exemplar.labels.items())), s.exemplar.value) if s.exemplar else None
            out.append((family.name, family.type, s.name, tuple(sorted(s.labels.items())), s.value, exemplar))
    return sorted(out, key=repr)


def same(parse: Callable[[str], Any], theirs: bytes, ours: bytes) -> bool:
    """Whether two renderings hold the same samples: identical bytes, or else equal parsed samples."""
    return theirs == ours or samples(parse, theirs) == samples(parse, ours)


def label_sets_in(body: bytes) -> int:
    """The ``qwen_fluent_label_sets{group="requests"}`` value of a text rendering."""
    for line in body.splitlines():
        if line.startswith(b'qwen_fluent_label_sets{group="requests"}'):
            return int(float(line.split()[-1]))
    return -1


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label-sets", type=int, default=2000, help="a multiple of 4")
    parser.add_argument("--records-per-set", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.label_sets < 4 or args.label_sets % 4:
        parser.error("--label-sets must be a positive multiple of 4")

    result: dict[str, Any] = {"label_sets_asked": args.label_sets}
    try:
        from qwen_fluent.metrics.exposition import Format, generate
    except ImportError as exc:
        ours = None
        result["ours_error"] = f"qwen_fluent.metrics.exposition not available ({exc})"
    else:
        ours = (Format, generate)
    try:
        # The registry `qwen-fluent serve` uses; prometheus-client's renderers read it through collect().
        from qwen_fluent.metrics.exposition import Registry
    except ImportError:
        registry: Any = CollectorRegistry(auto_describe=False)
    else:
        registry = Registry()
    metrics = build(args.label_sets, args.records_per_set)
    registry.register(metrics)
    result["registry"] = f"{type(registry).__module__}.{type(registry).__qualname__}"
    # Whether our renderer can take the aggregator's fast path (``expose``) or renders its collect() families.
    result["ours_path"] = "expose(writer)" if hasattr(metrics, "expose") else "collect()"

    text_s, text_body = best_of(args.runs, lambda: generate_latest(registry))
    om_s, om_body = best_of(args.runs, lambda: generate_openmetrics(registry))
    result["label_sets"] = label_sets_in(text_body)
    result["series_text"] = sum(1 for line in text_body.splitlines() if line and not line.startswith(b"#"))
    result["client_text_s"], result["client_text_bytes"] = text_s, len(text_body)
    result["client_openmetrics_s"], result["client_openmetrics_bytes"] = om_s, len(om_body)

    if ours is not None:
        Format, generate = ours
        try:
            ours_text_s, ours_text = best_of(args.runs, lambda: generate(registry, Format.TEXT))
            ours_om_s, ours_om = best_of(args.runs, lambda: generate(registry, Format.OPENMETRICS))
        except Exception as exc:  # a broken renderer is a finding: report it, keep the reference figures
            result["ours_error"] = f"qwen_fluent.metrics.exposition failed: {type(exc).__name__}: {exc}"
        else:
            result["ours_text_s"], result["ours_text_bytes"] = ours_text_s, len(ours_text)
            result["ours_openmetrics_s"], result["ours_openmetrics_bytes"] = ours_om_s, len(ours_om)
            # Taken before the comparison: parsing 300k samples costs far more memory than rendering.
            result["peak_rss_bytes"] = peak_rss()
            result["same_samples_text"] = same(parse_text, text_body, ours_text)
            result["same_samples_openmetrics"] = same(parse_openmetrics, om_body, ours_om)

    result.setdefault("peak_rss_bytes", peak_rss())
    print(json.dumps(result))
    return 0 if result["label_sets"] == args.label_sets else 1


if __name__ == "__main__":
    sys.exit(main())
