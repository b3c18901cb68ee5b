"""vLLM's periodic stats line across engine versions, as EngineStats gauges."""

from __future__ import annotations

import pytest

from qwen_fluent.records import NO_SOURCE, EngineStats, LogEvent, Normaliser, NormaliserConfig, Source, normalise

V0 = (
    "INFO 04-05 10:23:47 metrics.py:351] Avg prompt throughput: 1240.0 tokens/s, Avg generation throughput: "
    "55.3 tokens/s, Running: 3 reqs, Swapped: 1 reqs, Pending: 2 reqs, GPU KV cache usage: 12.5%, "
    "CPU KV cache usage: 0.4%."
)
V0_PREFIX = "INFO 04-05 10:23:52 metrics.py:367] Prefix cache hit rate: GPU: 45.67%, CPU: 0.00%"
V1 = (
    "INFO 04-05 10:23:47 [loggers.py:116] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg generation "
    "throughput: 12.4 tokens/s, Running: 1 reqs, Waiting: 4 reqs, GPU KV cache usage: 0.2%, Prefix cache hit rate: 37.5%"
)
V1_PROCESS_PREFIX = "(APIServer pid=1) " + V1.replace("04-05 10:23:47", "09-01 12:00:00")


def stats(line: str, **record) -> object:
    return normalise({"time": "2025-04-05T10:23:47.000000000Z", "stream": "stderr", "log": line, **record}, "t")


def test_v0_engine_line():
    assert stats(V0) == EngineStats(1240.0, 55.3, 3.0, 2.0, 1.0, 0.125, 0.004, None, "", NO_SOURCE)


def test_v0_prefix_cache_line_takes_the_gpu_rate():
    assert stats(V0_PREFIX) == EngineStats(None, None, None, None, None, None, None, pytest.approx(0.4567), "", NO_SOURCE)


@pytest.mark.parametrize("line", [V1, V1_PROCESS_PREFIX])
def test_v1_engine_line(line):
    assert stats(line) == EngineStats(0.0, 12.4, 1.0, 4.0, None, 0.002, None, 0.375, "", NO_SOURCE, "0")


def test_each_data_parallel_engine_keeps_its_index():
    # vLLM with --data-parallel-size 2: one line per engine, from one pod
    first = stats(V1)
    second = stats(V1.replace("Engine 000:", "Engine 001:").replace("Running: 1", "Running: 7"))
    assert (first.engine, first.running) == ("0", 1.0)
    assert (second.engine, second.running) == ("1", 7.0)


def test_the_engine_index_loses_its_leading_zeros_only():
    assert stats(V1.replace("Engine 000:", "Engine 012:")).engine == "12"
    assert stats(V1.replace("Engine 000:", "Engine 1000:")).engine == "1000"


def test_v0_lines_have_no_engine():
    assert stats(V0).engine == "" and stats(V0_PREFIX).engine == ""


def test_a_line_cut_short_keeps_what_it_holds():
    # the exact line in the Fluent Bit capture (tests/records/data/k8s-inputs)
    line = "INFO 04-05 10:23:47 engine.py:310 Avg prompt throughput: 1240.0 tokens/s"
    assert stats(line) == EngineStats(1240.0, None, None, None, None, None, None, None, "", NO_SOURCE)


def test_model_comes_from_the_pod_label():
    meta = {"namespace_name": "ns", "pod_name": "p", "container_name": "vllm", "host": "h", "labels": {"model": "qwen"}}
    event = stats(V1, kubernetes=meta)
    assert event.model == "qwen" and event.source == Source("ns", "p", "vllm", "h", {"model": "qwen"})


def test_a_percentage_above_100_is_dropped():
    event = stats("Avg prompt throughput: 1.0 tokens/s, GPU KV cache usage: 250.0%")
    assert event.prompt_throughput == 1.0 and event.gpu_kv_cache_usage is None


def test_lines_that_mention_throughput_without_fields_are_log_lines():
    assert stats("WARNING 04-05 10:23:47 x.py:1] throughput: unknown") == LogEvent("warning", NO_SOURCE)


def test_stats_parsing_can_be_turned_off():
    assert Normaliser(NormaliserConfig(parse_vllm_stats=False))({"log": V1}, "t") == LogEvent("info", NO_SOURCE)


def test_stats_inside_a_json_log_record():
    record = {"log": '{"level": "INFO", "message": "%s"}' % V1}
    assert normalise(record, "t") == EngineStats(0.0, 12.4, 1.0, 4.0, None, 0.002, None, 0.375, "", NO_SOURCE, "0")
