"""LLMMetrics: exact aggregation, label caps, expiry, exemplars and the other families.

Events go straight into the aggregator; what comes out is read back through
prometheus-client's own exposition and parser (text and OpenMetrics), and
compared with ground truth computed naively in tests/support/truth.py.
"""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from qwen_fluent.metrics import LLMMetrics, MetricsConfig, MetricsConfigError
from qwen_fluent.records import (
    EngineStats,
    LogEvent,
    PromptChange,
    RequestEvent,
    Source,
    Unrecognised,
)
from qwen_fluent.records.reasons import UNRECOGNISED_REASONS
from tests.support.truth import (
    Request,
    assert_samples_equal,
    expected_request_samples,
    key,
    parse_text,
    request_samples,
)

POD_A = Source("ml", "pod-a", "vllm", "node-1")
POD_B = Source("ml", "pod-b", "vllm", "node-1")


def request(status: str = "success", path: str = "/v1/chat/completions", model: str = "qwen", *,
            source: Source = POD_A, total: float | None = 1.0, queue: float | None = 0.1,
            inference: float | None = 0.9, ttft: float | None = 0.2, tpot: float | None = 0.02,
            input_tokens: int | None = 100, output_tokens: int | None = 40, gpu: float | None = 2.0**30,
            ts: float | None = 1000.0, request_id: str = "req-1") -> RequestEvent:
    return RequestEvent(status, path, model, request_id, "POST", input_tokens, output_tokens, total, queue,
                        inference, ttft, tpot, gpu, 200, "", ts, source)


def truth_of(ev: RequestEvent) -> Request:
    s = ev.source
    return Request(
        {"status": ev.status, "path": ev.path, "model": ev.model, "namespace": s.namespace, "pod": s.pod,
         "container": s.container},
        ev.total_s, ev.queue_s, ev.inference_s, ev.ttft_s, ev.tpot_s, ev.input_tokens, ev.output_tokens,
        ev.gpu_memory_bytes, ev.timestamp, ev.request_id)


def scrape(metrics: LLMMetrics) -> dict:
    registry = CollectorRegistry()
    registry.register(metrics)
    return parse_text(generate_latest(registry))


def openmetrics(metrics: LLMMetrics) -> list:
    registry = CollectorRegistry()
    registry.register(metrics)
    return list(parse_openmetrics(generate_openmetrics(registry).decode()))


# -- exact values --------------------------------------------------------------------

durations = st.one_of(st.none(), st.floats(0, 900, allow_nan=False),
                      st.sampled_from([0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 600.0]))  # bounds: le is inclusive
tokens = st.one_of(st.none(), st.integers(0, 200_000), st.sampled_from([1, 16, 8192, 131072]))
events = st.builds(
    request,
    status=st.sampled_from(["success", "error", "timeout", "client_error"]),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    model=st.sampled_from(["qwen", "llama"]),
    source=st.sampled_from([POD_A, POD_B, Source()]),
    total=durations, queue=durations, inference=durations,
    ttft=st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
    tpot=st.one_of(st.none(), st.floats(0, 5, allow_nan=False)),
    input_tokens=tokens, output_tokens=tokens,
    gpu=st.one_of(st.none(), st.floats(0, 2.0**40, allow_nan=False)),
    ts=st.floats(1.6e9, 1.8e9, allow_nan=False),
    request_id=st.text(max_size=20),
)


#: The default histogram label set of the requests built by ``request()``: ``labels`` without ``status``.
HIST_LABELS = {"path": "/v1/chat/completions", "model": "qwen", "namespace": "ml", "pod": "pod-a", "container": "vllm"}


@settings(max_examples=60, deadline=None)
@given(st.lists(events, max_size=60))
def test_every_request_sample_matches_ground_truth(evs: list[RequestEvent]) -> None:
    metrics = LLMMetrics(MetricsConfig())
    for ev in evs:
        metrics.observe(ev)
    assert_samples_equal(request_samples(scrape(metrics)), expected_request_samples([truth_of(e) for e in evs]))


def test_a_value_on_a_bound_lands_in_that_bucket() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(request(total=2.0, input_tokens=131072, output_tokens=8192))
    samples = scrape(metrics)
    labels = HIST_LABELS  # histograms carry no status by default
    assert samples[key("qwen_request_duration_seconds_bucket", {**labels, "le": "1.5"})] == 0
    assert samples[key("qwen_request_duration_seconds_bucket", {**labels, "le": "2.0"})] == 1
    assert samples[key("qwen_request_input_tokens_bucket", {**labels, "le": "65536.0"})] == 0
    assert samples[key("qwen_request_input_tokens_bucket", {**labels, "le": "131072.0"})] == 1
    assert samples[key("qwen_request_output_tokens_bucket", {**labels, "le": "8192.0"})] == 1


def test_missing_values_are_not_zero_observations() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(request(total=None, queue=None, ttft=None, input_tokens=None, gpu=None))
    samples = scrape(metrics)
    labels = {"status": "success", "path": "/v1/chat/completions", "model": "qwen", "namespace": "ml",
              "pod": "pod-a", "container": "vllm"}
    assert samples[key("qwen_requests_total", labels)] == 1
    assert samples[key("qwen_request_duration_seconds_count", HIST_LABELS)] == 0
    assert samples[key("qwen_request_inference_duration_seconds_count", HIST_LABELS)] == 1
    assert samples[key("qwen_input_tokens_total", labels)] == 0
    assert not any(k[0] == "qwen_gpu_memory_reported_bytes" for k in samples)


def test_zero_fill_gives_every_status_a_series_and_can_be_off() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(request(status="success"))
    statuses = {dict(k[1])["status"]: v for k, v in scrape(metrics).items() if k[0] == "qwen_requests_total"}
    assert statuses == {"success": 1, "error": 0, "client_error": 0, "timeout": 0, "cancelled": 0, "unknown": 0}
    metrics = LLMMetrics(MetricsConfig(zero_fill_statuses=False))
    metrics.observe(request(status="success"))
    assert [k for k in scrape(metrics) if k[0] == "qwen_requests_total"] == [
        key("qwen_requests_total", {"status": "success", "path": "/v1/chat/completions", "model": "qwen",
                                    "namespace": "ml", "pod": "pod-a", "container": "vllm"})]


def test_namespace_and_label_set_are_configurable() -> None:
    config = MetricsConfig(namespace="llm", labels=("status", "pod", "host"),
                           pod_labels={"team": "example.com/team"})
    metrics = LLMMetrics(config)
    source = Source("ml", "pod-a", "vllm", "node-1", {"example.com/team": "search"})
    metrics.observe(request(source=source))
    metrics.observe(request(source=Source("ml", "pod-b", "vllm", "node-2", None)))
    samples = scrape(metrics)
    assert samples[key("llm_requests_total", {"status": "success", "pod": "pod-a", "host": "node-1",
                                              "team": "search"})] == 1
    # A missing pod label is an empty value, which Prometheus treats as absent.
    assert samples[key("llm_requests_total", {"status": "success", "pod": "pod-b", "host": "node-2",
                                              "team": ""})] == 1
    # Per-pod gauges drop model (not configured) and the request labels.
    assert samples[key("llm_gpu_memory_reported_bytes", {"pod": "pod-a", "host": "node-1", "team": "search"})] == 2**30
    assert not any(k[0].startswith("qwen_") and not k[0].startswith("qwen_fluent_") for k in samples)


def test_histograms_carry_their_own_labels_per_family() -> None:
    config = MetricsConfig(histogram_labels=("model", "pod"),
                           family_labels={"request_queue_duration_seconds": ("status", "path", "model", "namespace",
                                                                             "pod", "container")})
    metrics = LLMMetrics(config)
    metrics.observe(request(status="success", total=1.0, queue=0.1))
    metrics.observe(request(status="error", total=3.0, queue=0.2))
    samples = scrape(metrics)
    full = {"path": "/v1/chat/completions", "model": "qwen", "namespace": "ml", "pod": "pod-a", "container": "vllm"}
    # Counters keep `labels` (status included); the duration histogram only model and pod.
    assert samples[key("qwen_requests_total", {**full, "status": "error"})] == 1
    assert samples[key("qwen_request_duration_seconds_count", {"model": "qwen", "pod": "pod-a"})] == 2
    assert samples[key("qwen_request_duration_seconds_sum", {"model": "qwen", "pod": "pod-a"})] == 4.0
    # The queue histogram, overridden, keeps one label set per status.
    assert samples[key("qwen_request_queue_duration_seconds_sum", {**full, "status": "success"})] == 0.1
    assert samples[key("qwen_request_queue_duration_seconds_sum", {**full, "status": "error"})] == 0.2
    groups = {dict(k[1])["group"]: v for k, v in samples.items() if k[0] == "qwen_fluent_label_sets"}
    # The queue histogram's labels are the counters': it shares their label sets (no group of its own).
    assert groups == {"requests": 2, "requests:model,pod": 1, "logs": 0, "vllm": 0, "prompts": 0}


def test_the_default_exposition_of_a_node_of_8_pods_is_the_documented_size() -> None:
    """docs/metrics.md, Cost: 8 vLLM pods, one model, two routes, three statuses, two levels, engine stats."""
    metrics = LLMMetrics(MetricsConfig())
    for p in range(8):
        src = Source("ml", f"vllm-{p}", "vllm", "node")
        for path in ("/v1/chat/completions", "/v1/completions"):
            for status in ("success", "error", "client_error"):
                metrics.observe(request(status=status, path=path, source=src))
        for level in ("info", "warning"):
            metrics.observe(LogEvent(level, src))
        metrics.observe(EngineStats(1.0, 2.0, 1, 0, 0, 0.5, 0.0, 0.3, "qwen", src, "0"))
    samples = scrape(metrics)
    assert sum(1 for k in samples if k[0].startswith("qwen_") and not k[0].startswith("qwen_fluent_")) == 2640


def test_gpu_gauge_is_the_last_reported_value_of_the_pod_across_statuses() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(request(status="success", gpu=1e9, ts=100.0))
    metrics.observe(request(status="error", gpu=3e9, ts=300.0))
    metrics.observe(request(status="success", path="/v1/completions", gpu=2e9, ts=200.0))
    metrics.observe(request(status="timeout", gpu=None, ts=400.0))
    samples = scrape(metrics)
    pod = {"model": "qwen", "namespace": "ml", "pod": "pod-a", "container": "vllm"}
    assert samples[key("qwen_gpu_memory_reported_bytes", pod)] == 3e9
    assert samples[key("qwen_last_request_timestamp_seconds", pod)] == 400.0


# -- label caps --------------------------------------------------------------------------


def test_a_label_past_its_cap_folds_into_the_overflow_value_and_is_counted() -> None:
    metrics = LLMMetrics(MetricsConfig(label_limits={"path": 2}))
    for i in range(5):
        for _ in range(i + 1):
            metrics.observe(request(path=f"/p{i}"))
    samples = scrape(metrics)
    paths = {dict(k[1])["path"]: v for k, v in samples.items()
             if k[0] == "qwen_requests_total" and dict(k[1])["status"] == "success"}
    assert paths == {"/p0": 1, "/p1": 2, "__overflow__": 3 + 4 + 5}
    assert samples[key("qwen_fluent_label_overflow_total", {"label": "path"})] == 12
    assert samples[key("qwen_fluent_label_overflow_total", {"label": "pod"})] == 0
    # Nothing was lost: the total is every request.
    assert sum(v for k, v in samples.items() if k[0] == "qwen_requests_total") == 15


def test_an_overlong_or_odd_label_value_folds() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(request(path="/" + "x" * 4096))  # past the largest max_label_length
    metrics.observe(request(path="/" + "y" * 299))  # kept whole: the normaliser's cut decides, not this guard
    metrics.observe(request(path="/ok\n\"quoted\" ünïcode"))
    samples = scrape(metrics)
    paths = {dict(k[1])["path"] for k in samples if k[0] == "qwen_requests_total"}
    assert paths == {"__overflow__", "/" + "y" * 299, "/ok\n\"quoted\" ünïcode"}
    assert samples[key("qwen_fluent_label_overflow_total", {"label": "path"})] == 1


def test_max_series_folds_the_whole_label_set() -> None:
    metrics = LLMMetrics(MetricsConfig(max_series=3))
    for i in range(6):
        metrics.observe(request(source=Source("ml", f"pod-{i}", "vllm")))
    samples = scrape(metrics)
    pods: dict[str, float] = {}
    for k, v in samples.items():
        if k[0] == "qwen_requests_total":
            pods[dict(k[1])["pod"]] = pods.get(dict(k[1])["pod"], 0) + v
    assert pods == {"pod-0": 1, "pod-1": 1, "pod-2": 1, "__overflow__": 3}
    # The folded label set gets no zero-filled statuses.
    assert sum(1 for k in samples if k[0] == "qwen_requests_total" and ("pod", "__overflow__") in k[1]) == 1
    overflow = {"status": "__overflow__", "path": "__overflow__", "model": "__overflow__",
                "namespace": "__overflow__", "pod": "__overflow__", "container": "__overflow__"}
    assert samples[key("qwen_requests_total", overflow)] == 3
    assert samples[key("qwen_fluent_label_overflow_total", {"label": "max_series"})] == 3
    assert samples[key("qwen_fluent_label_sets", {"group": "requests"})] == 4


# -- expiry -------------------------------------------------------------------------------


def test_a_quiet_pod_expires_whole_while_a_busy_pod_keeps_even_its_quiet_series() -> None:
    metrics = LLMMetrics(MetricsConfig(series_idle_seconds=100))
    metrics.observe(request(source=POD_A, status="error"))
    metrics.observe(request(source=POD_B))
    metrics.observe(LogEvent("info", POD_B))
    assert metrics.expire(0.0) == 0
    for t in (50.0, 100.0, 150.0, 200.0):
        metrics.observe(request(source=POD_A, status="success"))
        metrics.expire(t)
    samples = scrape(metrics)
    pods = {dict(k[1])["pod"] for k in samples if k[0] == "qwen_requests_total"}
    assert pods == {"pod-a"}
    # pod-a's error series was last updated before t=0 but the pod is alive.
    assert samples[key("qwen_requests_total", {"status": "error", "path": "/v1/chat/completions", "model": "qwen",
                                               "namespace": "ml", "pod": "pod-a", "container": "vllm"})] == 1
    assert not any(k[0] == "qwen_log_messages_total" for k in samples)
    # pod-b: its label set in each request group (counters, histograms) and its log set.
    assert samples[key("qwen_fluent_series_expired_total", {})] == 3


def test_expiry_never_removes_a_series_before_its_idle_time() -> None:
    metrics = LLMMetrics(MetricsConfig(series_idle_seconds=100))
    metrics.expire(0.0)
    metrics.observe(request())  # updated at some time in [0, 90)
    metrics.expire(90.0)
    assert metrics.expire(150.0) == 0  # may have been updated at 89: not 100 s yet
    assert metrics.expire(190.0) == 2  # certainly quiet since 90: the counters' and the histograms' label sets


def test_expiry_frees_room_under_the_cap() -> None:
    metrics = LLMMetrics(MetricsConfig(series_idle_seconds=10, label_limits={"pod": 1}))
    metrics.observe(request(source=POD_A))
    metrics.observe(request(source=POD_B))  # folds: pod cap is 1
    metrics.expire(0.0)
    metrics.expire(20.0)
    metrics.observe(request(source=POD_B))
    pods = {dict(k[1])["pod"] for k in scrape(metrics) if k[0] == "qwen_requests_total"}
    assert pods == {"pod-b"}


def test_idle_zero_keeps_everything() -> None:
    metrics = LLMMetrics(MetricsConfig(series_idle_seconds=0))
    metrics.observe(request())
    for t in (0.0, 1e6, 1e9):
        assert metrics.expire(t) == 0
    assert scrape(metrics)[key("qwen_fluent_label_sets", {"group": "requests"})] == 1


# -- exemplars ------------------------------------------------------------------------------


def test_latency_buckets_carry_the_last_request_id_in_openmetrics_only() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(request(total=1.2, inference=1.1, request_id="first", ts=10.0))
    metrics.observe(request(total=1.4, inference=1.3, request_id="second", ts=20.0))
    metrics.observe(request(total=7.0, inference=6.0, request_id="x" * 200, ts=30.0))
    families = {f.name: f for f in openmetrics(metrics)}
    exemplars = {(s.name, s.labels["le"]): s.exemplar for s in families["qwen_request_duration_seconds"].samples
                 if s.exemplar is not None}
    assert exemplars[("qwen_request_duration_seconds_bucket", "1.5")].labels == {"request_id": "second"}
    assert exemplars[("qwen_request_duration_seconds_bucket", "1.5")].value == 1.4
    assert float(exemplars[("qwen_request_duration_seconds_bucket", "1.5")].timestamp) == 20.0
    long_id = exemplars[("qwen_request_duration_seconds_bucket", "7.5")].labels["request_id"]
    assert long_id == "x" * 118  # OpenMetrics: at most 128 characters of exemplar labels
    assert len(exemplars) == 2
    inference = [s.exemplar.labels["request_id"] for s in families["qwen_request_inference_duration_seconds"].samples
                 if s.exemplar is not None]
    assert sorted(inference) == ["second", "x" * 118]
    assert all(s.exemplar is None for s in families["qwen_request_queue_duration_seconds"].samples)
    # The Prometheus text format has no exemplars.
    registry = CollectorRegistry()
    registry.register(metrics)
    assert b"request_id" not in generate_latest(registry)


def test_exemplars_can_be_off_and_need_a_request_id() -> None:
    metrics = LLMMetrics(MetricsConfig(exemplars=False))
    metrics.observe(request(request_id="r"))
    assert all(s.exemplar is None for f in openmetrics(metrics) for s in f.samples)
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(request(request_id=""))
    assert all(s.exemplar is None for f in openmetrics(metrics) for s in f.samples)


# -- the other families --------------------------------------------------------------------


def test_log_messages_are_counted_by_level_and_pod() -> None:
    metrics = LLMMetrics(MetricsConfig())
    for level, source in [("info", POD_A), ("info", POD_A), ("error", POD_A), ("warning", POD_B)]:
        metrics.observe(LogEvent(level, source))
    logs = {(dict(k[1])["level"], dict(k[1])["pod"]): v for k, v in scrape(metrics).items()
            if k[0] == "qwen_log_messages_total"}
    assert logs == {("info", "pod-a"): 2, ("error", "pod-a"): 1, ("warning", "pod-b"): 1}


def test_vllm_gauges_keep_the_last_value_of_each_field() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(EngineStats(100.0, 50.0, 3, 1, 0, 0.25, 0.0, 0.5, "qwen", POD_A))
    metrics.observe(EngineStats(200.0, 60.0, 4, 0, None, 0.5, None, None, "qwen", POD_A))
    samples = scrape(metrics)
    # engine="" (a line with no engine index): Prometheus reads it as no label at all
    pod = {"model": "qwen", "engine": "", "namespace": "ml", "pod": "pod-a", "container": "vllm"}
    assert {k[0]: v for k, v in samples.items() if k[0].startswith("qwen_vllm_") and k[1] == frozenset(pod.items())} == {
        "qwen_vllm_prompt_throughput_tokens_per_second": 200.0,
        "qwen_vllm_generation_throughput_tokens_per_second": 60.0,
        "qwen_vllm_running_requests": 4,
        "qwen_vllm_waiting_requests": 0,
        "qwen_vllm_swapped_requests": 0,
        "qwen_vllm_gpu_kv_cache_usage_ratio": 0.5,
        "qwen_vllm_cpu_kv_cache_usage_ratio": 0.0,
        "qwen_vllm_prefix_cache_hit_ratio": 0.5,
    }


def test_two_engines_of_one_pod_keep_a_series_each() -> None:
    # data-parallel vLLM: "Engine 000:" and "Engine 001:" lines, interleaved, from one pod
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(EngineStats(100.0, 50.0, 3, 1, None, 0.25, None, 0.5, "qwen", POD_A, "0"))
    metrics.observe(EngineStats(300.0, 70.0, 8, 5, None, 0.75, None, 0.1, "qwen", POD_A, "1"))
    metrics.observe(EngineStats(None, None, 2, None, None, None, None, None, "qwen", POD_A, "0"))
    samples = scrape(metrics)
    pod = {"model": "qwen", "namespace": "ml", "pod": "pod-a", "container": "vllm"}
    running = {dict(k[1])["engine"]: v for k, v in samples.items() if k[0] == "qwen_vllm_running_requests"}
    assert running == {"0": 2, "1": 8}
    assert samples[key("qwen_vllm_waiting_requests", {**pod, "engine": "0"})] == 1
    assert samples[key("qwen_vllm_waiting_requests", {**pod, "engine": "1"})] == 5
    assert samples[key("qwen_vllm_gpu_kv_cache_usage_ratio", {**pod, "engine": "1"})] == 0.75
    assert samples[key("qwen_vllm_prompt_throughput_tokens_per_second", {**pod, "engine": "0"})] == 100.0
    assert samples[key("qwen_fluent_label_sets", {"group": "vllm"})] == 2


def test_the_engine_label_has_a_cap_and_its_pod_expires_whole() -> None:
    metrics = LLMMetrics(MetricsConfig(label_limits={"engine": 2}, series_idle_seconds=10))
    for i in range(4):
        metrics.observe(EngineStats(None, None, i, None, None, None, None, None, "qwen", POD_A, str(i)))
    samples = scrape(metrics)
    running = {dict(k[1])["engine"]: v for k, v in samples.items() if k[0] == "qwen_vllm_running_requests"}
    assert running == {"0": 0, "1": 1, "__overflow__": 3}  # the overflow series keeps the last folded line
    assert samples[key("qwen_fluent_label_overflow_total", {"label": "engine"})] == 2
    metrics.expire(0.0)
    assert metrics.expire(20.0) == 3  # the pod went quiet: every engine's label set goes with it
    metrics.observe(EngineStats(None, None, 9, None, None, None, None, None, "qwen", POD_A, "7"))
    running = {dict(k[1])["engine"]: v for k, v in scrape(metrics).items() if k[0] == "qwen_vllm_running_requests"}
    assert running == {"7": 9}  # expiry released the engine values: room under the cap again


def test_engine_is_a_reserved_label_name() -> None:
    with pytest.raises(MetricsConfigError, match="already in use"):
        MetricsConfig(pod_labels={"engine": "example.com/engine"})


def test_a_gauge_never_reported_is_absent() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(EngineStats(1.0, 2.0, None, None, None, None, None, None, "qwen", POD_A))
    names = {k[0] for k in scrape(metrics) if k[0].startswith("qwen_vllm_")}
    assert names == {"qwen_vllm_prompt_throughput_tokens_per_second",
                     "qwen_vllm_generation_throughput_tokens_per_second"}


def test_prompt_changes_are_counted_and_the_current_hash_is_an_info_series() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(PromptChange("aaaa", "qwen", POD_A))
    metrics.observe(PromptChange("bbbb", "qwen", POD_A))
    samples = scrape(metrics)
    pod = {"model": "qwen", "namespace": "ml", "pod": "pod-a", "container": "vllm"}
    assert samples[key("qwen_system_prompt_changes_total", pod)] == 2
    assert samples[key("qwen_system_prompt_info", {**pod, "prompt_hash": "bbbb"})] == 1
    assert not any(k[0] == "qwen_system_prompt_info" and ("prompt_hash", "aaaa") in k[1] for k in samples)


def test_unrecognised_records_are_counted_by_reason_with_a_cap() -> None:
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(Unrecognised("unknown_shape", POD_A))
    for i in range(40):
        metrics.observe(Unrecognised(f"made-up-{i}", POD_A))
    samples = {dict(k[1])["reason"]: v for k, v in scrape(metrics).items()
               if k[0] == "qwen_fluent_unrecognised_records_total"}
    assert samples["unknown_shape"] == 1
    assert set(UNRECOGNISED_REASONS) <= set(samples)
    assert len(samples) == 33  # 32 reasons, then the overflow value
    assert sum(samples.values()) == 41


def test_anything_else_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        LLMMetrics(MetricsConfig()).observe({"status": "success"})


# -- as a collector ---------------------------------------------------------------------------


def test_registering_twice_is_refused_by_the_registry() -> None:
    registry = CollectorRegistry()
    registry.register(LLMMetrics(MetricsConfig()))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(LLMMetrics(MetricsConfig()))
    # A different namespace has different names, except the qwen_fluent_* ones it also owns.
    with pytest.raises(ValueError):
        registry.register(LLMMetrics(MetricsConfig(namespace="other")))


def test_scrapes_during_intake_never_see_a_count_go_backwards() -> None:
    metrics = LLMMetrics(MetricsConfig())
    registry = CollectorRegistry()
    registry.register(metrics)
    done = threading.Event()
    seen: list[dict] = []

    def scraper() -> None:
        while not done.is_set():
            seen.append(parse_text(generate_latest(registry)))

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for i in range(30_000):
            metrics.observe(request(total=(i % 100) / 10, request_id=f"r{i}"))
    finally:
        done.set()
        thread.join()
    seen.append(parse_text(generate_latest(registry)))
    assert len(seen) >= 2
    previous: dict = {}
    for samples in seen:
        for k, v in samples.items():
            if k[0].endswith(("_total", "_bucket", "_count")):
                assert v >= previous.get(k, 0), k
            if k[0].endswith("_bucket"):
                le = dict(k[1])["le"]
                count_key = (k[0][: -len("_bucket")] + "_count", frozenset(p for p in k[1] if p[0] != "le"))
                assert v <= samples[count_key] or le == "+Inf"
        previous = samples
    labels = {"status": "success", "path": "/v1/chat/completions", "model": "qwen", "namespace": "ml",
              "pod": "pod-a", "container": "vllm"}
    assert seen[-1][key("qwen_requests_total", labels)] == 30_000
    assert math.isclose(seen[-1][key("qwen_request_duration_seconds_sum", HIST_LABELS)],
                        sum((i % 100) / 10 for i in range(30_000)), rel_tol=1e-9)
