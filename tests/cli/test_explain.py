"""``qwen-fluent explain`` on every record shape docs/records.md describes, as a real process.

The shapes are fed as JSON lines (or raw log lines) on standard input of one
``qwen-fluent explain --json`` process per tag, and each answer is checked
against values worked out here from the document's rules (milliseconds to
seconds, MiB to bytes, the status table, the TGI token count, the vLLM
percentages), not against the normaliser's own output. The Fluent Bit
captures and container log files in tests/records/data are the real
envelopes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.records.wire import DATA, capture, container_log

QWEN = [sys.executable, "-m", "qwen_fluent", "explain"]
TIMEOUT = 60
MiB = 1024 * 1024


def run(stdin: str | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_FLUENT_")}
    return subprocess.run(QWEN + list(args), input=stdin if stdin is not None else "", capture_output=True,
                           text=True, timeout=TIMEOUT, env={**base, **(env or {})})


def explain_lines(lines: list[str], *args: str, env: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    proc = run("\n".join(lines) + "\n", "--json", *args, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stderr == ""
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def request_metric(answer: dict) -> dict:
    (requests,) = [m for m in answer["metrics"] if m["name"] == "qwen_requests_total"]
    return requests


def approx(value: Any) -> Any:
    return pytest.approx(value, rel=1e-9)


# -- the structured request log and its fields --------------------------------------------------------

ARTICLE = {"timestamp": "2025-04-05T10:23:45Z", "request_id": "req_abc123xyz", "method": "POST",
           "path": "/v1/chat/completions", "input_tokens": 1240, "output_tokens": 320, "total_time_ms": 1876,
           "queue_time_ms": 120, "inference_time_ms": 1756, "gpu_memory_mb": 18432, "status": "success"}
TGI_SPAN = {"inference_time": "1.253218796s", "parameters": "GenerateParameters { ... }", "queue_time": "65.432µs",
            "seed": "None", "time_per_token": "15.665234ms", "total_time": "1.254467332s",
            "validation_time": "1.183104ms", "name": "generate"}
TGI_JSON = {"timestamp": "2025-04-05T10:23:47.123456Z", "level": "INFO", "message": "Success",
            "target": "text_generation_router::server", "filename": "router/src/server.rs", "line_number": 545,
            "span": TGI_SPAN, "spans": [TGI_SPAN]}
TGI_PLAIN = (
    '2025-04-05T10:23:47.123456Z  INFO generate{parameters=GenerateParameters { best_of: None, stop: [] } '
    'total_time="1.254467332s" validation_time="1.183104ms" queue_time="65.432µs" inference_time="1.253218796s" '
    'time_per_token="15.665234ms" seed="None"}: text_generation_router::server: router/src/server.rs:545: Success'
)
TGI_EXPECTED = {"status": "success", "path": "/generate", "method": "POST", "total_s": approx(1.254467332),
                "queue_s": approx(65.432e-6), "inference_s": approx(1.253218796), "tpot_s": approx(0.015665234),
                # output_tokens = round(inference_time / time_per_token)
                "output_tokens": round(1.253218796 / 0.015665234), "input_tokens": None, "ttft_s": None}
VLLM_V0 = ("INFO 04-05 10:23:47 metrics.py:351] Avg prompt throughput: 1240.0 tokens/s, Avg generation throughput: "
           "55.3 tokens/s, Running: 3 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache usage: 12.5%, "
           "CPU KV cache usage: 0.0%.")
VLLM_V1 = ("(APIServer pid=1) INFO 09-01 12:00:00 [loggers.py:123] Engine 001: Avg prompt throughput: 0.0 tokens/s, "
           "Avg generation throughput: 12.4 tokens/s, Running: 1 reqs, Waiting: 2 reqs, GPU KV cache usage: 0.2%, "
           "Prefix cache hit rate: 45.5%")
PROMPT = "You are a helpful assistant."

#: (id, record or raw line, expected: "event" and a subset of "fields", or "reason" (and "hints")).
SHAPES: list[tuple[str, Any, dict[str, Any]]] = [
    ("article request log", ARTICLE, {"event": "request", "fields": {
        "status": "success", "path": "/v1/chat/completions", "method": "POST", "request_id": "req_abc123xyz",
        "input_tokens": 1240, "output_tokens": 320, "total_s": approx(1.876), "queue_s": approx(0.12),
        "inference_s": approx(1.756), "gpu_memory_bytes": 18432 * MiB, "ttft_s": None,
        "tpot_s": approx(1.756 / 320),  # no ttft: inference_s / output_tokens
        "timestamp": 1743848625.0, "http_status": None}}),
    ("other spellings and ttft", {"prompt_tokens": 10, "completion_tokens": 11, "total_time_s": 2.0,
                                  "ttft_ms": 200, "gpu_memory_gb": 2},
     {"event": "request", "fields": {"input_tokens": 10, "output_tokens": 11, "total_s": 2.0, "ttft_s": approx(0.2),
                                     "tpot_s": approx((2.0 - 0.2) / 10), "gpu_memory_bytes": 2 * 1024 * MiB,
                                     "status": "unknown"}}),
    ("bare key with a unit", {"total_time": "1.5s", "queue_time": "850µs"},
     {"event": "request", "fields": {"total_s": 1.5, "queue_s": approx(850e-6)}}),
    ("bare key without a unit", {"total_time": 1.5},
     {"reason": "invalid_request", "hints": ["total_time=1.5 is not a usable value"]}),
    ("negative duration", {"request_id": "r", "total_time_ms": -5},
     {"reason": "invalid_request", "hints": ["total_time_ms=-5 is not a usable value"]}),
    ("epoch milliseconds", {"timestamp": 1743848625000, "total_time_ms": 1}, {"event": "request", "fields": {
        "timestamp": 1743848625.0}}),
    ("path query cut", {"path": "/v1/completions?stream=true#x", "total_time_ms": 1, "method": "BREW"},
     {"event": "request", "fields": {"path": "/v1/completions", "method": "OTHER"}}),
    ("status word wins", {"status": "error", "http_status": 200, "total_time_ms": 1},
     {"event": "request", "fields": {"status": "error", "http_status": 200}}),
    ("numeric status 504", {"status": 504, "total_time_ms": 1},
     {"event": "request", "fields": {"status": "timeout", "http_status": 504}}),
    ("http 499", {"status_code": 499, "total_time_ms": 1}, {"event": "request", "fields": {"status": "cancelled"}}),
    ("http 429", {"http_status_code": 429, "total_time_ms": 1}, {"event": "request", "fields": {"status": "client_error"}}),
    ("Timed Out", {"status": "Timed Out", "total_time_ms": 1}, {"event": "request", "fields": {"status": "timeout"}}),
    ("OpenAI error map", {"error": {"type": "rate_limit_exceeded", "message": "slow down"}, "total_time_ms": 1},
     {"event": "request", "fields": {"status": "error", "error_type": "rate_limit_exceeded"}}),
    ("free-text error", {"error": "context length exceeded for 9000 tokens", "total_time_ms": 1},
     {"event": "request", "fields": {"status": "error", "error_type": ""}}),
    ("failed before measured", {"request_id": "r9", "status": "failed"},
     {"event": "request", "fields": {"status": "error", "request_id": "r9", "total_s": None}}),
    ("request id only is a log line", {"request_id": "r9", "level": "warning"},
     {"event": "log", "fields": {"level": "warning"}}),
    ("own model wins", {"model": "a", "total_time_ms": 1, "kubernetes": {"labels": {"model": "b"}}},
     {"event": "request", "fields": {"model": "a"}}),
    ("model from pod label", {"total_time_ms": 1, "kubernetes": {"labels": {"model": "b"}}},
     {"event": "request", "fields": {"model": "b"}}),
    # -- envelopes ---------------------------------------------------------------------------------------
    ("Keep_Log On", dict(ARTICLE, log=json.dumps(ARTICLE), stream="stdout", _p="F"),
     {"event": "request", "fields": {"request_id": "req_abc123xyz", "total_s": approx(1.876)}}),
    ("Merge_Log_Key log_processed", {"log_processed": ARTICLE, "stream": "stdout", "time": "2025-04-05T10:23:45Z"},
     {"event": "request", "fields": {"request_id": "req_abc123xyz", "output_tokens": 320}}),
    ("docker json-file unmerged", {"log": json.dumps(ARTICLE) + "\n", "stream": "stdout", "time": "2025-04-05T10:23:45Z"},
     {"event": "request", "fields": {"request_id": "req_abc123xyz", "input_tokens": 1240}}),
    ("CRI unmerged, message key", {"time": "2025-04-05T10:23:45Z", "stream": "stderr", "_p": "F",
                                   "message": "WARNING 04-05 10:23:47 api_server.py:1024] slow"},
     {"event": "log", "fields": {"level": "warning"}}),
    ("split line, first half", {"log": '{"request_id":"x","total_time_ms":'}, {"reason": "invalid_json"}),
    ("split line, second half", {"log": ',"output_tokens":3}'}, {"reason": "invalid_json"}),
    # -- TGI -------------------------------------------------------------------------------------------------
    ("TGI JSON Success", TGI_JSON, {"event": "request", "fields": TGI_EXPECTED}),
    ("TGI fields map", {**{k: v for k, v in TGI_JSON.items() if k != "message"}, "fields": {"message": "Success"}},
     {"event": "request", "fields": TGI_EXPECTED}),
    ("TGI plain Success", TGI_PLAIN, {"event": "request", "fields": TGI_EXPECTED}),
    ("TGI validation error", dict(TGI_JSON, level="ERROR", message="Input validation error",
                                  span={"name": "generate"}), {"event": "log", "fields": {"level": "error"}}),
    # -- vLLM stats ------------------------------------------------------------------------------------------
    ("vLLM v0 stats", VLLM_V0, {"event": "engine_stats", "fields": {
        "prompt_throughput": 1240.0, "generation_throughput": 55.3, "running": 3, "swapped": 0, "waiting": 0,
        "gpu_kv_cache_usage": approx(0.125), "cpu_kv_cache_usage": 0.0, "prefix_cache_hit_rate": None, "engine": ""}}),
    ("vLLM v0 prefix cache", "INFO 04-05 10:23:52 metrics.py:367] Prefix cache hit rate: GPU: 45.67%, CPU: 0.00%",
     {"event": "engine_stats", "fields": {"prefix_cache_hit_rate": approx(0.4567), "running": None}}),
    ("vLLM v1 engine line", VLLM_V1, {"event": "engine_stats", "fields": {
        "engine": "1", "generation_throughput": 12.4, "waiting": 2, "gpu_kv_cache_usage": approx(0.002),
        "prefix_cache_hit_rate": approx(0.455)}}),
    # -- log lines --------------------------------------------------------------------------------------------
    ("vLLM log line", "WARNING 04-05 10:23:47 api_server.py:1024] x", {"event": "log", "fields": {"level": "warning"}}),
    ("uvicorn access", 'INFO:     10.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
     {"event": "log", "fields": {"level": "info"}}),
    ("Python logging", "2025-04-05 10:23:47,123 - app - ERROR - boom", {"event": "log", "fields": {"level": "error"}}),
    ("Python root", "WARNING:root:careful", {"event": "log", "fields": {"level": "warning"}}),
    ("Rust tracing", "2025-04-05T10:23:47.123Z  INFO text_generation_router: started",
     {"event": "log", "fields": {"level": "info"}}),
    ("gunicorn", "[2025-04-05 10:23:47 +0000] [1] [CRITICAL] WORKER TIMEOUT", {"event": "log", "fields": {"level": "critical"}}),
    ("env_logger", "[2025-04-05T10:23:47Z WARN  router] slow", {"event": "log", "fields": {"level": "warning"}}),
    ("klog", "E0405 10:23:47.123456 1 server.go:42] failed", {"event": "log", "fields": {"level": "error"}}),
    ("logfmt", "ts=1 level=debug msg=hello", {"event": "log", "fields": {"level": "debug"}}),
    ("prose", "the model is loading", {"event": "log", "fields": {"level": "unknown"}}),
    ("JSON level", {"levelname": "ERROR", "msg": "x"}, {"event": "log", "fields": {"level": "error"}}),
    ("JSON severity", {"severity": "warn", "msg": "x"}, {"event": "log", "fields": {"level": "warning"}}),
    # -- system prompts ------------------------------------------------------------------------------------------
    ("prompt change event", {"event": "system_prompt_changed", "model": "m",
                             "system_prompt_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
     {"event": "prompt_change", "fields": {"prompt_hash": "9f86d081884c7d65", "model": "m"}}),
    ("prompt hash with prefix", {"system_prompt_hash": "sha256:9F86D081884C7D65"},
     {"event": "prompt_change", "fields": {"prompt_hash": "9f86d081884c7d65"}}),
    ("prompt text", {"system_prompt": PROMPT},
     {"event": "prompt_change", "fields": {"prompt_hash": hashlib.sha256(PROMPT.encode()).hexdigest()[:16]}}),
    ("prompt change without prompt", {"event": "system_prompt_changed"}, {"reason": "invalid_prompt_change"}),
    # -- not recognised --------------------------------------------------------------------------------------------
    ("empty record", {}, {"reason": "empty_record"}),
    ("empty line", {"log": "   "}, {"reason": "empty_line"}),
    ("line too long", {"log": "{" + "x" * 70_000}, {"reason": "line_too_long",
                                                    "hints": ["[records] max_line_length is 65536 characters"]}),
    ("typo in a key", {"totl_time_ms": 5, "stauts": "ok"},
     {"reason": "unknown_shape", "hints": ["key 'totl_time_ms': did you mean 'total_time_ms'?",
                                           "key 'stauts': did you mean 'status'?"]}),
    ("nothing known", {"foo": 1}, {"reason": "unknown_shape",
                                   "hints": ["none of its keys is one the normaliser reads; docs/records.md lists them"]}),
    ("a cut JSON line", '{"request_id": "x", "total_ti', {"reason": "invalid_json"}),
]


def _line(shape: Any) -> str:
    return shape if isinstance(shape, str) else json.dumps(shape, ensure_ascii=False)


@pytest.fixture(scope="module")
def answers() -> dict[str, dict]:
    """Every shape through one explain process (one process: the interpreter starts once)."""
    _, out = explain_lines([_line(shape) for _, shape, _ in SHAPES])
    assert len(out) == len(SHAPES)
    return {name: answer for (name, _, _), answer in zip(SHAPES, out)}


@pytest.mark.parametrize("name,shape,expected", SHAPES, ids=[s[0] for s in SHAPES])
def test_every_record_shape(answers, name, shape, expected):
    answer = answers[name]
    if "reason" in expected:
        assert answer["event"] == "unrecognised"
        assert answer["reason"] == expected["reason"]
        assert answer["why"]  # a sentence for every reason
        if "hints" in expected:
            assert answer["hints"] == expected["hints"]
        assert answer["metrics"] == [{"name": "qwen_fluent_unrecognised_records_total", "type": "counter",
                                      "labels": {"reason": expected["reason"]}, "change": "inc", "value": 1}]
        return
    assert answer["event"] == expected["event"]
    for field, value in expected["fields"].items():
        assert answer["fields"][field] == value, field
    for field, unit in (("total_s", "s"), ("input_tokens", "tokens"), ("gpu_memory_bytes", "bytes"),
                        ("gpu_kv_cache_usage", "ratio"), ("prompt_throughput", "tokens/s")):
        if field in answer["fields"]:
            assert answer["units"][field] == unit


def test_request_metrics_and_labels(answers):
    """The article's record: each family it moves, with the labels of the default [metrics] section."""
    answer = answers["article request log"]
    labels = {"path": "/v1/chat/completions", "model": "", "namespace": "", "pod": "", "container": ""}
    moved = {m["name"]: m for m in answer["metrics"]}
    assert moved["qwen_requests_total"]["labels"] == {"status": "success", **labels}
    assert moved["qwen_requests_total"]["value"] == 1
    assert moved["qwen_request_duration_seconds"] == {"name": "qwen_request_duration_seconds", "type": "histogram",
                                                      "labels": labels, "change": "observe", "value": approx(1.876)}
    assert moved["qwen_input_tokens_total"]["value"] == 1240
    assert moved["qwen_output_tokens_total"]["value"] == 320
    assert moved["qwen_gpu_memory_reported_bytes"]["value"] == 18432 * MiB
    assert "qwen_time_to_first_token_seconds" not in moved  # the record has no ttft: nothing observed
    # only the real status, not the zero-filled others
    assert [m["labels"]["status"] for m in answer["metrics"] if m["name"] == "qwen_requests_total"] == ["success"]


def test_engine_and_log_and_prompt_metrics(answers):
    engine = {m["name"]: m["value"] for m in answers["vLLM v1 engine line"]["metrics"]}
    assert engine["qwen_vllm_generation_throughput_tokens_per_second"] == 12.4
    assert engine["qwen_vllm_waiting_requests"] == 2
    log = answers["klog"]["metrics"]
    assert log == [{"name": "qwen_log_messages_total", "type": "counter", "change": "inc", "value": 1,
                    "labels": {"level": "error", "namespace": "", "pod": "", "container": ""}}]
    prompt = {m["name"]: m for m in answers["prompt change event"]["metrics"]}
    assert prompt["qwen_system_prompt_info"]["labels"]["prompt_hash"] == "9f86d081884c7d65"


# -- the real Fluent Bit envelopes, and the source from the kubernetes map or the tag -----------------------------


def _source_from_tag(tag: str) -> dict[str, str]:
    """pod, namespace, container from a tail tag ending in <pod>_<namespace>_<container>-<64 hex>.log."""
    name = tag.split(".containers.", 1)[1].removesuffix(".log")
    pod, namespace, rest = name.split("_", 2)
    return {"pod": pod, "namespace": namespace, "container": rest.rsplit("-", 1)[0]}


@pytest.mark.parametrize("case", ["tail_cri_k8s", "tail_docker_k8s", "tail_cri"])
def test_fluent_bit_captures(case):
    entries = capture(case)
    (tag,) = {tag for tag, _ in entries}
    rc, out = explain_lines([json.dumps(record, default=str) for _, record in entries], "--tag", tag)
    assert rc == 0 and len(out) == len(entries)
    from_tag = _source_from_tag(tag)
    for (_, record), answer in zip(entries, out):
        k8s = record.get("kubernetes", {})
        want = {"namespace": k8s.get("namespace_name", from_tag["namespace"]),
                "pod": k8s.get("pod_name", from_tag["pod"]),
                "container": k8s.get("container_name", from_tag["container"])}
        assert {k: answer["source"][k] for k in want} == want
        if "request_id" in record:
            assert answer["event"] == "request"
            assert answer["fields"]["request_id"] == record["request_id"]
            assert answer["fields"]["total_s"] == approx(record["total_time_ms"] / 1000)
            assert answer["fields"]["gpu_memory_bytes"] == record["gpu_memory_mb"] * MiB
            labels = request_metric(answer)["labels"]
            assert labels["path"] == record["path"] and labels["pod"] == want["pod"]
            assert labels["model"] == k8s.get("labels", {}).get("model", "")
        else:
            assert answer["event"] in ("log", "engine_stats")


@pytest.mark.parametrize("prefix,kind", [("llm-inference", "cri"), ("llm-router", "docker_json_file")])
def test_container_log_files(prefix, kind):
    """Raw container log lines, split ones included, read as a file is; the pod comes from the tag."""
    name, lines = container_log(prefix)
    tag = "kube.var.log.containers." + name
    rc, out = explain_lines(lines, "--tag", tag)
    assert rc == 0
    assert {a["input"]["kind"] for a in out} == {kind}
    # the file's request ids, each once, the split ones joined from their parts
    wanted = [json.loads(m)["request_id"] if m.startswith("{") else None for m in _messages(lines, kind)]
    assert [a["fields"].get("request_id") for a in out] == wanted
    for answer in out:
        assert answer["source"]["pod"] == _source_from_tag(tag)["pod"]


def _messages(lines: list[str], kind: str) -> list[str]:
    """The application's lines in a container log file, partial parts joined (CRI P/F, docker's missing newline)."""
    out, part = [], ""
    for line in lines:
        if kind == "cri":
            _, _, flag, text = line.split(" ", 3)
            part += text
            done = flag == "F"
        else:
            text = json.loads(line)["log"]
            part += text
            done = text.endswith("\n")
        if done:
            out.append(part.rstrip("\n"))
            part = ""
    return out


# -- configuration, text output, exit status -----------------------------------------------------------------------


def test_labels_follow_the_configuration(tmp_path):
    config = tmp_path / "qwen-fluent.toml"
    config.write_text('[metrics]\nlabels = ["status", "model"]\nhistogram_labels = ["model"]\n')
    rc, (answer,) = explain_lines([json.dumps(ARTICLE)], "--config", str(config),
                                  env={"QWEN_FLUENT_NAMESPACE": "acme"})
    assert rc == 0
    moved = {m["name"]: m["labels"] for m in answer["metrics"]}
    assert moved["acme_requests_total"] == {"status": "success", "model": ""}
    assert moved["acme_request_duration_seconds"] == {"model": ""}


def test_text_output_for_an_unrecognised_record():
    proc = run(None, '{"totl_time_ms": 5}')
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "read as   a JSON object",
        "event     not recognised: unknown_shape",
        "why       a map with none of the keys the normaliser reads: request fields, a TGI span, a system prompt, "
        "a log line (under [records] log_keys) or a level",
        "keys      totl_time_ms",
        "hint      key 'totl_time_ms': did you mean 'total_time_ms'?",
        "source    none (no kubernetes map, and the tag names no container log file)",
        "metrics   what this one record adds, with its labels:",
        '  qwen_fluent_unrecognised_records_total{reason="unknown_shape"} +1',
    ]


def test_text_output_for_a_request():
    proc = run(None, json.dumps({"request_id": "r1", "total_time_ms": 250, "status": 200,
                                 "kubernetes": {"namespace_name": "ml", "pod_name": "p-1", "container_name": "vllm"}}))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["read as   a JSON object", "event     request"]
    assert "  total_s           0.25 s" in lines
    assert "  http_status       200" in lines
    assert "source    namespace=ml pod=p-1 container=vllm" in lines
    assert ('  qwen_requests_total{status="success",path="",model="",namespace="ml",pod="p-1",container="vllm"} +1'
            in lines)
    assert '  qwen_request_duration_seconds{path="",model="",namespace="ml",pod="p-1",container="vllm"} observes 0.25' \
        in lines


def test_pretty_printed_object_on_stdin_is_one_record():
    proc = run(json.dumps(ARTICLE, indent=2), "--json")
    assert proc.returncode == 0
    (answer,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert answer["fields"]["request_id"] == "req_abc123xyz"


def test_nothing_to_explain_is_a_usage_error():
    proc = run("\n\n")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("qwen-fluent explain: error: nothing to explain: give a record as an argument or on "
                           "standard input\n")


def test_a_bad_environment_variable_is_named():
    proc = run(None, "{}", env={"QWEN_FLUENT_METRICS_PORT": "x"})
    assert proc.returncode == 2
    assert proc.stderr == ("qwen-fluent explain: error: environment variable QWEN_FLUENT_METRICS_PORT must be an "
                           "integer, got 'x'\n")


def test_every_reason_has_a_sentence_and_non_maps_are_explained():
    """In process: a record that is not a map never comes from a text line, only off the wire."""
    from qwen_fluent.cli.explain import REASONS, explain
    from qwen_fluent.config import load
    from qwen_fluent.records import UNRECOGNISED_REASONS, Normaliser

    assert set(REASONS) == set(UNRECOGNISED_REASONS)
    config = load(None, environ={})
    answer = explain([1, 2], "t", config, Normaliser(config.records))
    assert (answer["event"], answer["reason"], answer["keys"]) == ("unrecognised", "not_a_map", [])


def test_nan_and_infinity_are_json_safe():
    proc = run(None, '{"total_time_ms": NaN, "queue_time_ms": Infinity, "request_id": "r"}', "--json")
    answer = json.loads(proc.stdout)
    assert answer["record"] == {"total_time_ms": "nan", "queue_time_ms": "inf", "request_id": "r"}
    assert answer["reason"] == "invalid_request"
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in answer["fields"].values())


def test_data_files_are_present():
    assert (DATA / "k8s-inputs").is_dir() and Path(DATA / "tail_cri.client.bin").is_file()
