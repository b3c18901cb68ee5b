"""``serve --workers N``: the merge of N workers' snapshots is what one receiver fed everything shows.

Seeded outcomes of every kind are dealt out to several LLMMetrics (as the
kernel deals connections to workers) and, in the same order, to one. The
merged exposition must have exactly the single receiver's samples: counts,
buckets and totals equal, float sums equal to rounding (each worker adds its
own share in order), gauges by their rule (newest wins; the seeded times
increase, so the newest is the last), exemplars the newest per bucket. Also
with a histogram group of its own labels, expired label sets, and a worker
that has seen nothing.
"""

from __future__ import annotations

import math
import pickle
import random

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.metrics.exposition import Format, Writer
from qwen_fluent.metrics.merge import BlockCache, for_sending, merge
from qwen_fluent.records import EngineStats, LogEvent, PromptChange, RequestEvent, Source, Unrecognised

PODS = [Source("ml", f"vllm-{i}", "vllm", "node") for i in range(5)]


def outcomes(n: int, seed: int) -> list[tuple[object, float]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        now = 1.7e9 + i
        src = rng.choice(PODS)
        kind = rng.random()
        if kind < 0.75:
            total = rng.choice([None, rng.lognormvariate(0, 1)])
            out.append((RequestEvent(
                rng.choice(["success", "error", "timeout"]), rng.choice(["/v1/chat/completions", "/v1/completions"]),
                "qwen", f"req-{i}", "POST", rng.choice([None, rng.randrange(1, 9000)]), rng.randrange(1, 900),
                total, None if total is None else total / 10, None if total is None else total * 0.9,
                rng.choice([None, 0.05]), None, rng.choice([None, float(rng.randrange(1, 9)) * 2**30]), 200, "",
                rng.choice([None, now]), src), now))
        elif kind < 0.85:
            out.append((LogEvent(rng.choice(["info", "warning"]), src), now))
        elif kind < 0.93:
            out.append((EngineStats(rng.random(), rng.random(), rng.randrange(5), rng.choice([None, 1]), 0,
                                    rng.random(), None, rng.choice([None, rng.random()]), "qwen", src,
                                    rng.choice(["", "0", "1"])), now))
        elif kind < 0.97:
            out.append((PromptChange(f"sha256:{rng.randrange(3)}", "qwen", src), now))
        else:
            out.append((Unrecognised("unknown_shape", src), now))
    return out


def samples(metrics: LLMMetrics, snap=None) -> dict:
    writer = Writer(Format.OPENMETRICS)
    metrics.expose_snapshot(writer, metrics.snapshot() if snap is None else snap)
    out = {}
    for family in parse_openmetrics(writer.getvalue().decode()):
        for s in family.samples:
            ex = (s.exemplar.labels["request_id"], s.exemplar.value) if s.exemplar else None
            out[(s.name, frozenset(s.labels.items()))] = (s.value, ex)
    return out


CONFIGS = [
    MetricsConfig(),
    MetricsConfig(histogram_labels=("model", "pod"), family_labels={"request_queue_duration_seconds": ("status",)}),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "own-histogram-labels"])
@pytest.mark.parametrize("workers", [1, 3])
def test_the_merge_of_the_workers_is_one_receiver(config: MetricsConfig, workers: int) -> None:
    one = LLMMetrics(config)
    many = [LLMMetrics(config) for _ in range(workers + 1)]  # the last worker sees nothing
    rng = random.Random(1)
    for n, (outcome, now) in enumerate(outcomes(3000, seed=2)):
        one.observe(outcome, now)
        many[rng.randrange(workers)].observe(outcome, now)
        if n == 1500:  # an expiry pass half way, everywhere
            one.expire(now)
            for m in many:
                m.expire(now)
    # The snapshots travel between processes: pickled, without the live series.
    snaps = [pickle.loads(pickle.dumps(for_sending(m.snapshot()))) for m in many]
    template = LLMMetrics(config)
    merged = samples(template, merge(template, snaps))
    want = samples(one)
    assert merged.keys() == want.keys()
    for key, (value, exemplar) in want.items():
        got, got_exemplar = merged[key]
        if key[0].endswith("_sum"):
            assert math.isclose(got, value, rel_tol=1e-12), key
        else:
            assert got == value, key
        assert got_exemplar == exemplar, key


def test_the_block_cache_hands_blocks_to_the_next_scrape() -> None:
    metrics = LLMMetrics()
    for outcome, now in outcomes(200, seed=3):
        metrics.observe(outcome, now)
    cache = BlockCache()
    first = merge(metrics, [for_sending(metrics.snapshot())])
    cache.fill(first)
    writer = Writer(Format.TEXT)
    metrics.expose_snapshot(writer, first)
    cache.keep(first)
    second = merge(metrics, [for_sending(metrics.snapshot())])
    cache.fill(second)
    assert all(s.block is not None for s, _, _ in second.groups[0][0])
    again = Writer(Format.TEXT)
    metrics.expose_snapshot(again, second)
    assert again.getvalue() == writer.getvalue()
