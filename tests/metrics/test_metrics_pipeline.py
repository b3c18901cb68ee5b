"""MetricsSink: every entry of a message is accepted or unrecognised, once, through the real normaliser."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from qwen_fluent.forward.events import Entry, Message, Mode
from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser
from qwen_fluent.stats import ReceiverStats
from tests.support.truth import key, parse_text

KUBERNETES = {"pod_name": "pod-a", "namespace_name": "ml", "container_name": "vllm"}
REQUEST = {"request_id": "r1", "path": "/v1/chat/completions", "input_tokens": 10, "output_tokens": 5,
           "total_time_ms": 1500, "status": "success", "kubernetes": KUBERNETES}


def message(*records: object) -> Message:
    return Message("kube.var.log.containers.x", [Entry(1.7e9, r) for r in records], Mode.FORWARD, None, {}, 0, {})


def scrape(metrics: LLMMetrics) -> dict:
    registry = CollectorRegistry()
    registry.register(metrics)
    return parse_text(generate_latest(registry))


def test_each_entry_is_counted_once_as_accepted_or_unrecognised() -> None:
    metrics, stats = LLMMetrics(MetricsConfig()), ReceiverStats()
    sink = MetricsSink(Normaliser(), metrics, stats)
    sink(message(REQUEST, dict(REQUEST, status="error"), {"level": "warning", "message": "slow"},
                 {"nothing": "known"}, {}))
    sink(message())
    assert stats.records == {"accepted": 3, "unrecognised": 2}
    samples = scrape(metrics)
    labels = {"path": "/v1/chat/completions", "model": "", "namespace": "ml", "pod": "pod-a", "container": "vllm"}
    assert samples[key("qwen_requests_total", {**labels, "status": "success"})] == 1
    assert samples[key("qwen_requests_total", {**labels, "status": "error"})] == 1
    # Histograms carry no status: the success and the error request share one label set.
    assert samples[key("qwen_request_duration_seconds_sum", labels)] == 3.0
    assert samples[key("qwen_fluent_unrecognised_records_total", {"reason": "unknown_shape"})] == 1
    assert samples[key("qwen_fluent_unrecognised_records_total", {"reason": "empty_record"})] == 1


def test_a_failing_normaliser_loses_no_record_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    real = Normaliser()

    def flaky(record: object, tag: object):  # a stand-in for a normaliser bug
        if record == {"boom": True}:
            raise RuntimeError("bug")
        return real(record, tag)

    metrics, stats = LLMMetrics(MetricsConfig()), ReceiverStats()
    sink = MetricsSink(flaky, metrics, stats)
    with caplog.at_level(logging.ERROR):
        sink(message(REQUEST, {"boom": True}, {"boom": True}, REQUEST))
    assert stats.records == {"accepted": 2, "unrecognised": 2}
    assert scrape(metrics)[key("qwen_fluent_unrecognised_records_total", {"reason": "internal_error"})] == 2
    assert len([r for r in caplog.records if "internal_error" in r.getMessage()]) == 1


def test_data_parallel_vllm_engines_of_one_pod_keep_their_own_gauges() -> None:
    # the raw Fluent Bit records of a vLLM started with --data-parallel-size 2, interleaved
    line = ("(APIServer pid=1) INFO 09-01 12:00:0{s} [loggers.py:123] Engine 00{e}: Avg prompt throughput: "
            "0.0 tokens/s, Avg generation throughput: {g} tokens/s, Running: {r} reqs, Waiting: 0 reqs, "
            "GPU KV cache usage: {kv}%, Prefix cache hit rate: 0.0%")
    records = [{"log": line.format(s=s, e=e, g=g, r=r, kv=kv), "stream": "stdout", "kubernetes": KUBERNETES}
               for s, e, g, r, kv in [(0, 0, 10.0, 1, 5.0), (1, 1, 40.0, 6, 50.0), (2, 0, 20.0, 2, 7.5)]]
    metrics, stats = LLMMetrics(MetricsConfig()), ReceiverStats()
    MetricsSink(Normaliser(), metrics, stats)(message(*records))
    assert stats.records == {"accepted": 3}
    samples = scrape(metrics)
    pod = {"model": "", "namespace": "ml", "pod": "pod-a", "container": "vllm"}
    assert samples[key("qwen_vllm_running_requests", {**pod, "engine": "0"})] == 2
    assert samples[key("qwen_vllm_running_requests", {**pod, "engine": "1"})] == 6
    assert samples[key("qwen_vllm_generation_throughput_tokens_per_second", {**pod, "engine": "1"})] == 40.0
    assert samples[key("qwen_vllm_gpu_kv_cache_usage_ratio", {**pod, "engine": "0"})] == 0.075
