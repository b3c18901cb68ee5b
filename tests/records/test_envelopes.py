"""The envelopes Fluent Bit produces, from real Fluent Bit 4.2.8 captures and its real inputs."""

from __future__ import annotations

import json

import pytest

from qwen_fluent.records import (
    NO_SOURCE,
    EngineStats,
    LogEvent,
    Normaliser,
    NormaliserConfig,
    RequestEvent,
    Source,
    Unrecognised,
    normalise,
)

from .wire import capture, container_log

MIB = 2**20
INFERENCE_POD = Source(
    namespace="ml-serving",
    pod="llm-inference-7d9f8b6c5-x2k4p",
    container="vllm",
    host="gpu-node-01",
    labels={"app.kubernetes.io/name": "llm-inference", "pod-template-hash": "7d9f8b6c5", "model": "llama-3-8b-instruct"},
)
ROUTER_POD = Source(
    namespace="ml-serving",
    pod="llm-router-5c6d7e8f9-abcde",
    container="router",
    host="gpu-node-01",
    labels={"app.kubernetes.io/name": "llm-router", "pod-template-hash": "5c6d7e8f9", "model": "llama-3-8b-instruct"},
)
MODEL = "llama-3-8b-instruct"


def first_request(source: Source, model: str) -> RequestEvent:
    return RequestEvent(
        status="success", path="/v1/chat/completions", model=model, request_id="req_abc123xyz", method="POST",
        input_tokens=1240, output_tokens=320, total_s=1.876, queue_s=0.12, inference_s=1.756, ttft_s=None,
        tpot_s=1.756 / 320, gpu_memory_bytes=18432.0 * MIB, http_status=None, error_type="",
        timestamp=1743848625.0, source=source,
    )


def joined_request(request_id: str, source: Source, model: str) -> RequestEvent:
    return RequestEvent(
        status="success", path="/v1/chat/completions", model=model, request_id=request_id, method="POST",
        input_tokens=2048, output_tokens=512, total_s=3.01, queue_s=0.25, inference_s=2.76, ttft_s=None,
        tpot_s=2.76 / 512, gpu_memory_bytes=20480.0 * MIB, http_status=None, error_type="",
        timestamp=1743848626.0, source=source,
    )


def failed_request(source: Source, model: str) -> RequestEvent:
    return RequestEvent(
        status="error", path="/v1/completions", model=model, request_id="req_err999", method="POST",
        input_tokens=9000, output_tokens=0, total_s=0.015, queue_s=0.015, inference_s=0.0, ttft_s=None,
        tpot_s=None, gpu_memory_bytes=18432.0 * MIB, http_status=None, error_type="",
        timestamp=1743848628.0, source=source,
    )


def stats_1240(source: Source, model: str) -> EngineStats:
    return EngineStats(1240.0, None, None, None, None, None, None, None, model, source)


def test_cri_with_kubernetes_filter_merge_log():
    """tail + multiline cri + kubernetes filter (Merge_Log On): fields at the root, metadata map beside them."""
    outcomes = [normalise(record, tag) for tag, record in capture("tail_cri_k8s")]
    assert outcomes == [
        first_request(INFERENCE_POD, MODEL),
        # the P/F halves were joined by Fluent Bit (it leaves "_p": "P" on the joined record)
        joined_request("req_partial01", INFERENCE_POD, MODEL),
        stats_1240(INFERENCE_POD, MODEL),
        failed_request(INFERENCE_POD, MODEL),
    ]


def test_docker_with_kubernetes_filter_merge_log():
    outcomes = [normalise(record, tag) for tag, record in capture("tail_docker_k8s")]
    assert outcomes == [
        first_request(ROUTER_POD, MODEL),
        joined_request("req_split01", ROUTER_POD, MODEL),
        LogEvent("info", ROUTER_POD),  # "INFO router started on :8080\n"
    ]


def test_cri_with_parser_filter_and_no_metadata_takes_the_source_from_the_tag():
    outcomes = [normalise(record, tag) for tag, record in capture("tail_cri")]
    from_tag = Source("ml-serving", "llm-inference-7d9f8b6c5-x2k4p", "vllm", "", None)
    assert outcomes == [
        first_request(from_tag, ""),
        joined_request("req_partial01", from_tag, ""),
        stats_1240(from_tag, ""),
        failed_request(from_tag, ""),
    ]


def test_tag_source_can_be_turned_off():
    normaliser = Normaliser(NormaliserConfig(source_from_tag=False))
    tag, record = capture("tail_cri")[0]
    assert normaliser(record, tag).source == NO_SOURCE


def test_docker_json_file_lines_without_merge_need_json_loads():
    """The docker envelope as Fluent Bit's docker parser gives it: the JSON line is a string under ``log``."""
    name, lines = container_log("llm-router-")
    tag = "kube.var.log.containers." + name
    from_tag = Source("ml-serving", "llm-router-5c6d7e8f9-abcde", "router", "", None)
    outcomes = [normalise(json.loads(line), tag) for line in lines]
    assert outcomes == [
        first_request(from_tag, ""),
        # without the multiline docker parser the split line stays in two broken halves
        Unrecognised("invalid_json", from_tag),
        Unrecognised("invalid_json", from_tag),
        LogEvent("info", from_tag),
    ]


@pytest.mark.parametrize("key", ["log", "message"])
def test_cri_lines_without_merge(key):
    """CRI lines as the cri parser splits them: ``log`` (multiline parser) or ``message`` (regex parser)."""
    name, lines = container_log("llm-inference-")
    records = []
    for line in lines:
        time, stream, logtag, text = line.split(" ", 3)
        records.append({"time": time, "stream": stream, "logtag": logtag, key: text})
    from_tag = Source("ml-serving", "llm-inference-7d9f8b6c5-x2k4p", "vllm", "", None)
    outcomes = [normalise(record, "kube.var.log.containers." + name) for record in records]
    assert outcomes == [
        first_request(from_tag, ""),
        Unrecognised("invalid_json", from_tag),  # the P half: a JSON object cut short
        Unrecognised("invalid_json", from_tag),  # the F half: the tail of one
        stats_1240(from_tag, ""),
        failed_request(from_tag, ""),
    ]


def test_merge_log_key_keeps_the_parsed_record_under_a_key():
    tag, record = capture("tail_cri_k8s")[0]
    meta = record.pop("kubernetes")
    envelope = {"time": record.pop("time"), "stream": record.pop("stream"), "log_processed": record, "kubernetes": meta}
    assert normalise(envelope, tag) == first_request(INFERENCE_POD, MODEL)


def test_keep_log_on_keeps_the_line_beside_the_merged_fields():
    tag, record = capture("tail_cri_k8s")[0]
    record["log"] = json.dumps({k: v for k, v in record.items() if k not in ("kubernetes", "time", "stream", "_p")})
    assert normalise(record, tag) == first_request(INFERENCE_POD, MODEL)


def test_log_keys_are_configurable():
    line = {"payload": '{"request_id": "r1", "output_tokens": 5, "total_time_ms": 10}'}
    assert normalise(line, "t") == Unrecognised("unknown_shape", NO_SOURCE)
    event = Normaliser(NormaliserConfig(log_keys=("payload",)))(line, "t")
    assert isinstance(event, RequestEvent) and event.output_tokens == 5


def test_model_label_is_configurable_and_the_record_model_wins():
    tag, record = capture("tail_docker_k8s")[0]
    by_name = Normaliser(NormaliserConfig(model_labels=("app.kubernetes.io/name",)))
    assert by_name(record, tag).model == "llm-router"
    assert Normaliser(NormaliserConfig(model_labels=("absent",)))(record, tag).model == ""
    record["model"] = "qwen2.5-7b"
    assert normalise(record, tag).model == "qwen2.5-7b"


def test_kubernetes_metadata_is_cleaned_and_bounded():
    meta = {
        "namespace_name": "ns\udcff",  # invalid UTF-8 byte, surrogate-escaped by the wire decoder
        "pod_name": "p" * 1000,
        "container_name": ["not", "a", "string"],
        "host": b"node-\xff",
        "labels": {f"k{i}": "v" for i in range(200)} | {"model": "m" * 300, 7: "int key"},
    }
    source = normalise({"log": "INFO hi", "kubernetes": meta}, "t").source
    assert source.namespace == "ns\ufffd"
    assert source.pod == "p" * 256
    assert source.container == ""
    assert source.host == "node-\ufffd"
    assert len(source.labels) == 64
    for value in (source.namespace, source.pod, source.host, *source.labels, *source.labels.values()):
        value.encode("utf-8")  # raises on a lone surrogate


def test_kubernetes_metadata_cache_follows_label_changes():
    normaliser = Normaliser()
    meta = {"namespace_name": "a", "pod_name": "b", "container_name": "c", "host": "h", "labels": {"model": "m1"}}
    record = {"request_id": "r", "output_tokens": 1, "kubernetes": meta}
    assert normaliser(record, "t").model == "m1"
    assert normaliser(record, "t").source is normaliser(record, "t").source  # cached
    meta["labels"] = {"model": "m2"}
    assert normaliser(record, "t").model == "m2"
    meta["pod_name"] = ["unhashable"]
    assert normaliser(record, "t").source.pod == ""


@pytest.mark.parametrize(
    "tag",
    [
        "kube.var.log.containers.not-a-kubelet-name.log",
        "kube.var.log.containers.a_b.log",
        "app.requests",
        "",
    ],
)
def test_tags_that_do_not_name_a_container_give_no_source(tag):
    assert normalise({"log": "INFO x"}, tag).source == NO_SOURCE


def test_container_id_suffix_is_kept_when_it_is_not_an_id():
    tag = "kube.var.log.containers.pod-1_ns_side-car.log"
    assert normalise({"log": "INFO x"}, tag).source == Source("ns", "pod-1", "side-car", "", None)
