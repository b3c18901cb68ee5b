"""Hugging Face TGI's per-request Success event, JSON (--json-output) and plain."""

from __future__ import annotations

import json

import pytest

from qwen_fluent.records import NO_SOURCE, LogEvent, Normaliser, NormaliserConfig, RequestEvent, normalise

SPAN = {
    "inference_time": "1.253218796s",
    "parameters": "GenerateParameters { best_of: None, temperature: Some(0.5), max_new_tokens: Some(80), stop: [\"}\"] }",
    "queue_time": "65.432µs",
    "seed": "None",
    "time_per_token": "15.665234ms",
    "total_time": "1.254467332s",
    "validation_time": "1.183104ms",
    "name": "generate",
}
SUCCESS = {
    "timestamp": "2025-04-05T10:23:47.123456Z",
    "level": "INFO",
    "message": "Success",
    "target": "text_generation_router::server",
    "filename": "router/src/server.rs",
    "line_number": 545,
    "span": SPAN,
    "spans": [SPAN],
}
EXPECTED = RequestEvent(
    status="success", path="/generate", model="", request_id="", method="POST", input_tokens=None,
    output_tokens=80, total_s=1.254467332, queue_s=65.432e-6, inference_s=1.253218796, ttft_s=None,
    tpot_s=0.015665234, gpu_memory_bytes=None, http_status=None, error_type="",
    timestamp=1743848627.123456, source=NO_SOURCE,
)


def close(event: RequestEvent) -> RequestEvent:
    return event._replace(**{k: pytest.approx(v) for k, v in event._asdict().items() if isinstance(v, float)})


def test_json_success_merged_into_the_root():
    assert normalise(dict(SUCCESS), "t") == close(EXPECTED)


def test_json_success_as_a_wrapped_line():
    assert normalise({"log": json.dumps(SUCCESS) + "\n", "stream": "stdout"}, "t") == close(EXPECTED)


def test_json_success_without_flatten_event():
    record = {k: v for k, v in SUCCESS.items() if k != "message"} | {"fields": {"message": "Success"}}
    assert normalise(record, "t") == close(EXPECTED)


def test_timings_found_in_the_span_list():
    record = dict(SUCCESS, span={"name": "async_stream"}, spans=[{"name": "other"}, dict(SPAN, name="chat_completions")])
    event = normalise(record, "t")
    assert event.path == "/v1/chat/completions" and event.output_tokens == 80


@pytest.mark.parametrize(
    "name, path",
    [("generate_stream", "/generate_stream"), ("completions", "/v1/completions"), ("compat_generate", "/"), ("x", "")],
)
def test_span_name_gives_the_route(name, path):
    event = normalise(dict(SUCCESS, span=dict(SPAN, name=name)), "t")
    assert event.path == path and event.method == ("POST" if path else "")


@pytest.mark.parametrize(
    "text, seconds",
    [("2.1s", 2.1), ("850µs", 850e-6), ("850μs", 850e-6), ("850us", 850e-6), ("3ns", 3e-9), ("12ms", 0.012),
     ("1.5", None), ("-1s", None), ("nans", None), ("1m", None), ("s", None)],
)
def test_rust_duration_strings(text, seconds):
    event = normalise(dict(SUCCESS, span=dict(SPAN, total_time=text)), "t")
    assert event.total_s == (pytest.approx(seconds) if seconds is not None else None)


def test_other_events_in_the_span_are_log_lines():
    error = dict(SUCCESS, level="ERROR", message="Input validation error: `inputs` must not be empty",
                 span={"name": "generate", "parameters": "..."})
    assert normalise(error, "t") == LogEvent("error", NO_SOURCE)
    assert normalise(dict(SUCCESS, span=dict(SPAN, total_time="?", queue_time="?", inference_time="?",
                                             time_per_token="?")), "t") == LogEvent("info", NO_SOURCE)


PLAIN = (
    '2025-04-05T10:23:47.123456Z  INFO generate{parameters=GenerateParameters { best_of: None, stop: [] } '
    'total_time="1.254467332s" validation_time="1.183104ms" queue_time="65.432µs" inference_time="1.253218796s" '
    'time_per_token="15.665234ms" seed="None"}: text_generation_router::server: router/src/server.rs:545: Success'
)


def test_plain_success_line():
    assert normalise({"log": PLAIN}, "t") == close(EXPECTED)


def test_plain_success_line_with_ansi_colours():
    coloured = PLAIN.replace(" INFO ", " \x1b[32m INFO\x1b[0m ").replace("total_time", "\x1b[3mtotal_time\x1b[0m")
    assert normalise({"log": "\x1b[2m" + coloured}, "t") == close(EXPECTED)


def test_tgi_parsing_can_be_turned_off():
    normaliser = Normaliser(NormaliserConfig(parse_tgi=False))
    assert normaliser(dict(SUCCESS), "t") == LogEvent("info", NO_SOURCE)
    assert normaliser({"log": PLAIN}, "t") == LogEvent("info", NO_SOURCE)
