"""Seeded records through the real TCP receiver, checked exactly and through a real Prometheus.

The chain: a Forward client (tests/support/forward.py) sends the article's
request log records, with Kubernetes metadata as Fluent Bit adds it, to the
assembled receiver (qwen_fluent.app.Receiver: Forward server, normaliser,
metrics, /metrics) over TCP, with acks. Ground truth is computed from the same
raw records (tests/support/truth.py: milliseconds / 1000, MiB * 2**20, a
linear scan per bucket).

1. Every request-family sample of /metrics equals the ground truth; so do the
   receiver's record, message and log counters.
2. ``promtool check metrics`` accepts the exposition.
3. Debian's Prometheus scrapes /metrics (OpenMetrics, 1 s interval) and
   answers the article's four panels rewritten for our names: request rate by
   status, P95 latency, GPU memory, token throughput. Counts are exact; rates
   equal, to 1e-9, Prometheus 2.42's extrapolated rate computed from the
   ground truth at the scrapes' sample times; quantiles fall in the ground
   truth's bucket, and are exact where Prometheus' interpolation can be
   computed from the truth.
4. Exemplars reach Prometheus' exemplar storage with our request ids.

To make rates checkable, records go in two phases: phase A sends exactly one
request per label set (every series is born at 1), Prometheus scrapes, then
phase B sends the rest. The raw increase of each series inside the window is
then exactly (its total - 1), whatever the scrape timing.
"""

from __future__ import annotations

import math
import random
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from qwen_fluent.metrics.buckets import DURATION_BUCKETS
from tests.support.forward import ForwardClient
from tests.support.prometheus import PrometheusServer, require_binary
from tests.support.receiver import ReceiverThread
from tests.support.truth import (
    Request,
    assert_samples_equal,
    expected_request_samples,
    key,
    parse_text,
    request_samples,
)

pytestmark = pytest.mark.prometheus

SEED = 20250405
PODS = ("llm-inference-0", "llm-inference-1", "llm-inference-2")
PATHS = ("/v1/chat/completions", "/v1/completions")
STATUSES = ("success", "error", "timeout", "client_error", "cancelled")
STATUS_WEIGHTS = (80, 8, 4, 4, 4)
NAMESPACE, CONTAINER, MODEL = "ml-serving", "vllm", "qwen2.5-7b-instruct"
PHASE_B_REQUESTS = 900
LOG_LINES = {"info": 12, "warning": 5, "error": 3}
UNRECOGNISED = 4
TAG = "kube.var.log.containers.llm-inference_ml-serving_vllm-0123.log"
#: The panels' range: the article's 5 minutes, which covers the whole test.
WINDOW = "5m"
WINDOW_S = 300.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Dataset:
    """The records to send (phase A, phase B) and their ground truth."""

    phase_a: list[dict[str, Any]] = field(default_factory=list)
    phase_b: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)  # in sending order
    first: dict[tuple[str, ...], Request] = field(default_factory=dict)  # phase A's request per label set


def make_dataset() -> Dataset:
    rng = random.Random(SEED)
    data = Dataset()
    base = 1_743_848_625.0  # 2025-04-05T10:23:45Z, the article's example
    n = 0

    def request(status: str, path: str, pod: str) -> tuple[dict[str, Any], Request]:
        nonlocal n
        n += 1
        # 85 % fast (0.1-0.9 s), 15 % slow (2.05-2.95 s): P95 sits in the (2, 3] bucket with margin.
        total_ms = rng.randint(100, 900) if rng.random() < 0.85 else rng.randint(2050, 2950)
        queue_ms = rng.randint(0, 50)
        ttft_ms = rng.randint(20, 400)
        tpot_ms = rng.randint(5, 60)
        input_tokens = rng.choice([rng.randint(16, 4000), 131072, 32768])
        output_tokens = rng.choice([rng.randint(1, 2000), 8192, 1])
        gpu_mb = rng.randint(16000, 40000)
        stamp = base + n // 3  # whole seconds, shared by neighbours, like real request logs
        record = {
            "timestamp": iso(stamp), "request_id": f"req-{n:05d}", "method": "POST", "path": path,
            "model": MODEL, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "total_time_ms": total_ms, "queue_time_ms": queue_ms, "inference_time_ms": total_ms - queue_ms,
            "time_to_first_token_ms": ttft_ms, "time_per_output_token_ms": tpot_ms,
            "gpu_memory_mb": gpu_mb, "status": status,
            "kubernetes": {"pod_name": pod, "namespace_name": NAMESPACE, "container_name": CONTAINER,
                           "host": "gpu-node-01", "labels": {"app": "llm-inference"}},
        }
        truth = Request(
            {"status": status, "path": path, "model": MODEL, "namespace": NAMESPACE, "pod": pod,
             "container": CONTAINER},
            total_ms / 1000, queue_ms / 1000, (total_ms - queue_ms) / 1000, ttft_ms / 1000, tpot_ms / 1000,
            input_tokens, output_tokens, gpu_mb * 2.0**20, stamp, record["request_id"])
        return record, truth

    for pod in PODS:
        for path in PATHS:
            for status in STATUSES:
                record, truth = request(status, path, pod)
                data.phase_a.append(record)
                data.requests.append(truth)
                data.first[(status, path, pod)] = truth
    for _ in range(PHASE_B_REQUESTS):
        status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
        record, truth = request(status, rng.choice(PATHS), rng.choice(PODS))
        data.phase_b.append(record)
        data.requests.append(truth)
    others: list[dict[str, Any]] = []
    for level, count in LOG_LINES.items():
        others += [{"level": level, "message": f"{level} line",
                    "kubernetes": {"pod_name": PODS[0], "namespace_name": NAMESPACE, "container_name": CONTAINER}}
                   ] * count
    others += [{"something": "else"}] * UNRECOGNISED
    for record in others:  # spread through phase B
        data.phase_b.insert(rng.randrange(len(data.phase_b) + 1), record)
    return data


def send(port: int, records: list[dict[str, Any]], prefix: str) -> None:
    """In messages of up to 100 records, alternating Forward and PackedForward mode, each acked."""
    with ForwardClient("127.0.0.1", port) as client:
        for i in range(0, len(records), 100):
            entries = [(time.time(), r) for r in records[i:i + 100]]
            client.send(TAG, entries, chunk=f"{prefix}-{i}", packed=(i // 100) % 2 == 1)


def scrape(port: int, accept: str = "") -> bytes:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


@dataclass
class Run:
    data: Dataset
    receiver: ReceiverThread
    prom: PrometheusServer
    started: float
    at: float  # a query time after the last scrape that saw everything


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    require_binary("prometheus")
    data = make_dataset()
    with ReceiverThread() as receiver:
        with PrometheusServer([f"127.0.0.1:{receiver.metrics_port}"]) as prom:
            prom.wait_until_up()
            started = time.time()
            send(receiver.forward_port, data.phase_a, "a")
            prom.wait_for_scrape_after(time.time())
            send(receiver.forward_port, data.phase_b, "b")
            prom.wait_for_scrape_after(time.time())
            at = round(time.time(), 3)  # Prometheus keeps milliseconds
            yield Run(data, receiver, prom, started, at)


# -- 1. exact values on /metrics ----------------------------------------------------------


def test_every_request_sample_equals_the_ground_truth(run: Run) -> None:
    samples = parse_text(scrape(run.receiver.metrics_port))
    assert_samples_equal(request_samples(samples), expected_request_samples(run.data.requests))


def test_every_record_is_counted_once(run: Run) -> None:
    samples = parse_text(scrape(run.receiver.metrics_port))
    requests = len(run.data.requests)
    logs = sum(LOG_LINES.values())
    assert samples[key("qwen_fluent_records_total", {"outcome": "accepted"})] == requests + logs
    assert samples[key("qwen_fluent_records_total", {"outcome": "unrecognised"})] == UNRECOGNISED
    assert samples[key("qwen_fluent_records_total", {"outcome": "invalid"})] == 0
    assert samples[key("qwen_fluent_unrecognised_records_total", {"reason": "unknown_shape"})] == UNRECOGNISED
    messages = {dict(k[1])["mode"]: v for k, v in samples.items() if k[0] == "qwen_fluent_messages_total"}
    sent = math.ceil(len(run.data.phase_a) / 100) + math.ceil(len(run.data.phase_b) / 100)
    assert messages["forward"] + messages["packed_forward"] == sent
    assert samples[key("qwen_fluent_acks_total", {})] == sent
    levels = {dict(k[1])["level"]: v for k, v in samples.items() if k[0] == "qwen_log_messages_total"}
    assert levels == LOG_LINES
    assert all(v == 0 for k, v in samples.items() if k[0] == "qwen_fluent_label_overflow_total")


# -- 2. promtool ----------------------------------------------------------------------------


def test_promtool_check_metrics_accepts_the_exposition(run: Run) -> None:
    promtool = require_binary("promtool")
    body = scrape(run.receiver.metrics_port)
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


# -- 3. the article's panels through Prometheus ---------------------------------------------


def _vector(result: list[dict], by: str | None = None) -> dict[str, float]:
    return {(r["metric"].get(by, "") if by else ""): float(r["value"][1]) for r in result}


def test_scraped_counts_are_exact(run: Run) -> None:
    truth = Counter(r.labels["status"] for r in run.data.requests)
    got = _vector(run.prom.query("sum by (status) (qwen_requests_total)", at=run.at), "status")
    assert got == {**{s: float(truth[s]) for s in STATUSES}, "unknown": 0.0}
    tokens = sum(r.output_tokens for r in run.data.requests)
    assert _vector(run.prom.query("sum(qwen_output_tokens_total)", at=run.at)) == {"": float(tokens)}


def prometheus_rate(points: list[tuple[float, float]], range_start: float, range_end: float) -> float:
    """rate() of one counter series as Prometheus 2.42 computes it (promql/functions.go,
    extrapolatedRate): the increase between the first and last sample in the range,
    extrapolated towards the range's ends by at most 1.1 average scrape intervals,
    and never to below zero."""
    ms = [round(t * 1000) for t, _ in points]  # Prometheus' own integer milliseconds
    start_ms, end_ms = round(range_start * 1000), round(range_end * 1000)
    v0, v1 = points[0][1], points[-1][1]
    result = v1 - v0
    to_start, to_end = (ms[0] - start_ms) / 1000, (end_ms - ms[-1]) / 1000
    sampled = (ms[-1] - ms[0]) / 1000
    average = sampled / (len(points) - 1)
    if result > 0 and v0 >= 0:
        to_start = min(to_start, sampled * (v0 / result))
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return result * (interval / sampled) / ((end_ms - start_ms) / 1000)


def _expected_rates(run: Run, selector: str, value_of: Any, group: str | None) -> dict[str, float]:
    """Per group, the rate Prometheus must answer if it holds the ground truth: each series'
    stored samples start at what phase A sent and end at the truth's total; the sample
    times are the scrapes' own (taken from Prometheus)."""
    raw = run.prom.query(f"{selector}[{WINDOW}]", at=run.at)
    rates: dict[str, float] = {}
    for series in raw:
        labels = series["metric"]
        points = [(float(t), float(v)) for t, v in series["values"]]
        assert len(points) >= 2, labels
        status_path_pod = (labels["status"], labels["path"], labels["pod"])
        first = run.data.first.get(status_path_pod)
        total = sum(value_of(r) for r in run.data.requests
                    if (r.labels["status"], r.labels["path"], r.labels["pod"]) == status_path_pod)
        start = value_of(first) if first is not None else 0
        assert points[0][1] == start, f"{labels}: born at {points[0][1]}, phase A sent {start}"
        assert points[-1][1] == total, f"{labels}: last sample {points[-1][1]}, truth {total}"
        # The rate depends on the first and last values (the truth's) and the sample times.
        truth_points = [(points[0][0], start), *points[1:-1], (points[-1][0], total)]
        g = labels.get(group, "") if group else ""
        rates[g] = rates.get(g, 0.0) + prometheus_rate(truth_points, run.at - WINDOW_S, run.at)
    return rates


def test_panel_request_rate_by_status(run: Run) -> None:
    got = _vector(run.prom.query(f"sum by (status) (rate(qwen_requests_total[{WINDOW}]))", at=run.at), "status")
    expected = _expected_rates(run, "qwen_requests_total", lambda r: 1, "status")
    assert set(got) == set(expected) == set(STATUSES) | {"unknown"}
    for status, rate in expected.items():
        assert math.isclose(got[status], rate, rel_tol=1e-9, abs_tol=1e-12), (status, got, expected)
    assert got["success"] > 0 and got["unknown"] == 0


def test_panel_token_throughput(run: Run) -> None:
    got = _vector(run.prom.query(f"sum(rate(qwen_output_tokens_total[{WINDOW}]))", at=run.at))[""]
    expected = _expected_rates(run, "qwen_output_tokens_total", lambda r: r.output_tokens, None)[""]
    assert math.isclose(got, expected, rel_tol=1e-9)
    # The article's form: the output-token histogram's _sum counts the same tokens. It is split
    # by fewer labels (no status), so rate()'s extrapolation at series starts differs a little;
    # the totals are equal to the token.
    total = _vector(run.prom.query("sum(qwen_output_tokens_total)", at=run.at))[""]
    same = _vector(run.prom.query("sum(qwen_request_output_tokens_sum)", at=run.at))[""]
    assert same == total == sum(r.output_tokens for r in run.data.requests if r.output_tokens is not None)
    rate = _vector(run.prom.query(f"sum(rate(qwen_request_output_tokens_sum[{WINDOW}]))", at=run.at))[""]
    assert math.isclose(rate, got, rel_tol=0.01)


def _bucket_of(value: float) -> tuple[float, float]:
    bounds = (0.0, *DURATION_BUCKETS, math.inf)
    for lower, upper in zip(bounds, bounds[1:]):
        if lower < value <= upper:
            return lower, upper
    raise AssertionError(value)


def test_panel_p95_latency(run: Run) -> None:
    durations = sorted(r.total_s for r in run.data.requests)
    n = len(durations)
    below_2 = sum(1 for d in durations if d <= 2.0)
    below_3 = sum(1 for d in durations if d <= 3.0)
    # The premise that makes the rate form robust: P95's rank is well inside (2, 3].
    assert 0.80 * n < below_2 < 0.92 * n and below_3 == n
    truth_bucket = _bucket_of(durations[math.ceil(0.95 * n) - 1])
    assert truth_bucket == (2.0, 3.0)

    expr = f"histogram_quantile(0.95, sum by (le) (rate(qwen_request_duration_seconds_bucket[{WINDOW}])))"
    p95 = _vector(run.prom.query(expr, at=run.at))[""]
    assert truth_bucket[0] < p95 <= truth_bucket[1]

    # On the counters themselves Prometheus' linear interpolation is computable from the truth.
    cumulative = _vector(run.prom.query("histogram_quantile(0.95, sum by (le) (qwen_request_duration_seconds_bucket))",
                                        at=run.at))[""]
    assert math.isclose(cumulative, 2.0 + (0.95 * n - below_2) / (below_3 - below_2), rel_tol=1e-9)

    # Per series, as the article wrote it: every answer inside the series' own truth range of buckets.
    per_series = run.prom.query(
        f"histogram_quantile(0.95, rate(qwen_request_duration_seconds_bucket[{WINDOW}]))", at=run.at)
    assert per_series and all(math.isnan(float(r["value"][1])) or 0 < float(r["value"][1]) <= 3.0
                              for r in per_series)


def test_panel_gpu_memory(run: Run) -> None:
    got = _vector(run.prom.query("qwen_gpu_memory_reported_bytes", at=run.at), "pod")
    truth: dict[str, float] = {}
    newest: dict[str, float] = {}
    for r in run.data.requests:  # sending order: the last of equal timestamps wins
        pod = r.labels["pod"]
        if r.timestamp >= newest.get(pod, -math.inf):
            newest[pod], truth[pod] = r.timestamp, r.gpu_bytes
    assert got == truth
    # In the article's unit, for its panel.
    mib = _vector(run.prom.query("qwen_gpu_memory_reported_bytes / 2^20", at=run.at), "pod")
    assert all(float(v).is_integer() for v in mib.values())


# -- 4. exemplars -----------------------------------------------------------------------------


def test_exemplars_reach_prometheus_with_request_ids(run: Run) -> None:
    # Exemplars carry the request's own timestamp (the log's), not the scrape time.
    stamps = [r.timestamp for r in run.data.requests]
    result = run.prom.query_exemplars("qwen_request_duration_seconds_bucket", min(stamps) - 1, max(stamps) + 1)
    ids = {r.request_id: r.total_s for r in run.data.requests}
    seen = 0
    for series in result:
        lower_upper = series["seriesLabels"]["le"]
        upper = math.inf if lower_upper == "+Inf" else float(lower_upper)
        for exemplar in series["exemplars"]:
            request_id = exemplar["labels"]["request_id"]
            assert request_id in ids
            assert float(exemplar["value"]) == ids[request_id] <= upper
            assert float(exemplar["timestamp"]) == stamps[int(request_id[4:]) - 1]
            seen += 1
    assert seen > 0, f"no exemplars stored: {result}"
