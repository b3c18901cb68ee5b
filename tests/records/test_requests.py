"""The structured request log: fields, units, spellings, statuses, derived values, malformed values."""

from __future__ import annotations

import math

import pytest

from qwen_fluent.records import NO_SOURCE, LogEvent, RequestEvent, Unrecognised, normalise

BASE = {
    "timestamp": "2025-04-05T10:23:45Z",
    "request_id": "req_abc123xyz",
    "method": "POST",
    "path": "/v1/chat/completions",
    "input_tokens": 1240,
    "output_tokens": 320,
    "total_time_ms": 1876,
    "queue_time_ms": 120,
    "inference_time_ms": 1756,
    "gpu_memory_mb": 18432,
    "status": "success",
}


def request(**changes) -> RequestEvent:
    record = dict(BASE)
    for key, value in changes.items():
        if value is DROP:
            record.pop(key, None)
        else:
            record[key] = value
    event = normalise(record, "llm.requests")
    assert isinstance(event, RequestEvent), event
    return event


DROP = object()


def test_base_record_in_base_units():
    event = request()
    assert event == RequestEvent(
        status="success", path="/v1/chat/completions", model="", request_id="req_abc123xyz", method="POST",
        input_tokens=1240, output_tokens=320, total_s=1.876, queue_s=0.12, inference_s=1.756, ttft_s=None,
        tpot_s=1.756 / 320, gpu_memory_bytes=18432.0 * 2**20, http_status=None, error_type="",
        timestamp=1743848625.0, source=NO_SOURCE,
    )


def test_optional_fields():
    event = request(model="llama-3-8b", time_to_first_token_ms=250, http_status=200, error_type="none")
    assert (event.model, event.ttft_s, event.http_status, event.error_type) == ("llama-3-8b", 0.25, 200, "none")


@pytest.mark.parametrize(
    "suffix, value, seconds",
    [("_ms", 1500, 1.5), ("_s", 1.5, 1.5), ("_seconds", 1.5, 1.5), ("_ms", 1.5, 0.0015), ("", "1.5s", 1.5), ("", "1500ms", 1.5)],
)
def test_time_spellings(suffix, value, seconds):
    fields = {f"{name}_time_ms": DROP for name in ("total", "queue", "inference")}
    fields |= {f"{name}_time{suffix}": value for name in ("total", "queue", "inference")}
    fields |= {"time_to_first_token" + suffix: value}
    event = request(**fields)
    assert event.total_s == event.queue_s == event.inference_s == event.ttft_s == pytest.approx(seconds)


def test_bare_numeric_time_has_no_unit_and_is_missing():
    event = request(total_time_ms=DROP, total_time=1.5)
    assert event.total_s is None and event.inference_s == 1.756


def test_first_usable_spelling_wins():
    assert request(total_time_ms=-1, total_time_s=2.0).total_s == 2.0
    assert request(total_time_ms=1000, total_time_s=2.0).total_s == 1.0


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("gpu_memory_mb", 1, 2**20),
        ("gpu_memory_mib", 1, 2**20),
        ("gpu_memory_bytes", 4096, 4096),
        ("gpu_memory_gb", 2, 2 * 2**30),
        ("gpu_memory_gib", 0.5, 2**29),
    ],
)
def test_gpu_memory_units(key, value, expected):
    assert request(**({"gpu_memory_mb": DROP} | {key: value})).gpu_memory_bytes == expected


def test_token_spellings_from_openai_usage():
    event = request(input_tokens=DROP, output_tokens=DROP, prompt_tokens=10, completion_tokens=20)
    assert (event.input_tokens, event.output_tokens) == (10, 20)


@pytest.mark.parametrize(
    "bad",
    [-1, -0.5, math.nan, math.inf, -math.inf, True, False, None, "abc", "nan", "-5", [], {}, b"12", 10**400, "9" * 40,
     1e300],
)
def test_malformed_numbers_are_missing_for_that_field_only(bad):
    event = request(total_time_ms=bad, input_tokens=bad, gpu_memory_mb=bad)
    assert event.total_s is None and event.input_tokens is None and event.gpu_memory_bytes is None
    assert event.output_tokens == 320 and event.queue_s == 0.12  # the rest of the record counts


def test_numeric_strings_and_integral_floats_are_accepted():
    event = request(input_tokens="1240", output_tokens=320.0, total_time_ms="1876")
    assert (event.input_tokens, event.output_tokens, event.total_s) == (1240, 320, 1.876)
    assert request(output_tokens=12.5).output_tokens is None


def test_implausible_values_are_missing():
    event = request(total_time_ms=86_400_001, output_tokens=100_000_001, gpu_memory_bytes=2.0**45, gpu_memory_mb=DROP)
    assert (event.total_s, event.output_tokens, event.gpu_memory_bytes) == (None, None, None)
    assert request(total_time_ms=86_400_000).total_s == 86_400.0


# -- status -----------------------------------------------------------------

@pytest.mark.parametrize(
    "status, expected",
    [
        ("success", "success"), ("OK", "success"), ("Completed", "success"),
        ("error", "error"), ("failed", "error"), ("FAILURE", "error"),
        ("timeout", "timeout"), ("timed out", "timeout"), ("deadline-exceeded", "timeout"),
        ("cancelled", "cancelled"), ("canceled", "cancelled"), ("aborted", "cancelled"),
        ("client_error", "client_error"), ("bad_request", "client_error"), ("rate_limited", "client_error"),
        ("weird", "unknown"), ("", "unknown"), ("x" * 1000, "unknown"), (None, "unknown"), (3.5, "unknown"),
        (200, "success"), (204, "success"), ("201", "success"), (301, "unknown"), (100, "unknown"),
        (400, "client_error"), (404, "client_error"), (429, "client_error"), (408, "timeout"), (499, "cancelled"),
        (500, "error"), (503, "error"), (504, "timeout"), (600, "unknown"), (True, "unknown"),
    ],
)
def test_status_mapping(status, expected):
    assert request(status=status).status == expected


@pytest.mark.parametrize(
    "status, http_status, expected, code",
    [
        (DROP, 200, "success", 200),
        (DROP, 499, "cancelled", 499),
        ("error", 200, "error", 200),  # a stream that failed after its 200 header: the word wins
        ("success", 500, "success", 500),
        ("weird", 504, "timeout", 504),  # an unknown word defers to the HTTP code
        (404, DROP, "client_error", 404),  # a numeric status is an HTTP code
        (DROP, "503", "error", 503),
        (DROP, 42, "unknown", None),
    ],
)
def test_status_and_http_status_precedence(status, http_status, expected, code):
    event = request(status=status, http_status=http_status)
    assert (event.status, event.http_status) == (expected, code)


def test_status_code_spelling_and_error_without_status():
    assert request(status=DROP, status_code=429).status == "client_error"
    assert request(status=DROP, error="context length exceeded").status == "error"
    assert request(status=DROP, error_type="oom").status == "error"
    assert request(status=DROP).status == "unknown"


def test_error_type_is_bounded_and_free_text_is_not_a_label():
    assert request(error="context length exceeded for 9000 tokens").error_type == ""
    assert request(error={"type": "invalid_request_error", "message": "..."}).error_type == "invalid_request_error"
    assert request(error={"code": "context_length_exceeded"}).error_type == "context_length_exceeded"
    assert len(request(error_type="e" * 5000).error_type) == 256


# -- recognition ------------------------------------------------------------

def test_request_id_with_status_and_no_measurements_is_a_request():
    event = normalise({"request_id": "r1", "status": "error", "path": "/v1/completions"}, "t")
    assert isinstance(event, RequestEvent)
    assert (event.status, event.output_tokens, event.total_s) == ("error", None, None)


def test_request_id_alone_is_an_application_log_line():
    assert normalise({"request_id": "r1", "level": "warning", "message": "slow"}, "t") == LogEvent("warning", NO_SOURCE)
    assert normalise({"request_id": "r1"}, "t") == Unrecognised("unknown_shape", NO_SOURCE)
    assert normalise({"request_id": "r1", "status": "weird"}, "t") == Unrecognised("unknown_shape", NO_SOURCE)


@pytest.mark.parametrize(
    "record",
    [
        {"output_tokens": -1},
        {"total_time_ms": "fast", "input_tokens": None},
        {"request_id": "r", "queue_time_ms": math.nan, "status": "weird"},
        {"inference_time_ms": True, "gpu_memory_mb": -5},
    ],
)
def test_request_fields_with_no_usable_value_are_an_invalid_request(record):
    assert normalise(record, "t") == Unrecognised("invalid_request", NO_SOURCE)


def test_one_usable_field_is_enough():
    event = normalise({"output_tokens": 7}, "t")
    assert isinstance(event, RequestEvent) and event.output_tokens == 7 and event.status == "unknown"


# -- derived time per output token -------------------------------------------

def test_tpot_from_ttft_excludes_the_first_token():
    event = request(time_to_first_token_ms=250, output_tokens=321)
    assert event.tpot_s == pytest.approx((1.876 - 0.25) / 320)


def test_tpot_falls_back_to_inference_over_tokens():
    assert request(output_tokens=1, time_to_first_token_ms=250).tpot_s == pytest.approx(1.756)
    assert request(time_to_first_token_ms=5000).tpot_s == pytest.approx(1.756 / 320)  # ttft > total: inconsistent
    assert request(output_tokens=0).tpot_s is None
    assert request(inference_time_ms=DROP, output_tokens=10).tpot_s is None


def test_logged_tpot_wins():
    assert request(time_per_output_token_ms=4).tpot_s == 0.004
    assert request(tpot_s=0.01).tpot_s == 0.01


# -- label-bound strings ----------------------------------------------------

def test_path_drops_query_and_fragment():
    assert request(path="/v1/completions?api-version=2024&x=1").path == "/v1/completions"
    assert request(path="/v1/models#frag").path == "/v1/models"
    assert request(path=42).path == ""


@pytest.mark.parametrize("value, expected", [("post", "POST"), (" GET ", "GET"), ("PROPFIND", "OTHER"), ("", ""), (7, "")])
def test_method_is_a_fixed_set(value, expected):
    assert request(method=value).method == expected


def test_strings_with_lone_surrogates_come_out_as_utf8():
    event = request(model="llama\udcff", path="/v1/\ud800x", request_id="r\udc80")
    assert (event.model, event.path, event.request_id) == ("llama\ufffd", "/v1/\ufffdx", "r\ufffd")


def test_huge_strings_are_cut():
    event = request(model="m" * 1_000_000, path="/" + "p" * 1_000_000, request_id="r" * 1_000_000)
    assert len(event.model) == len(event.path) == len(event.request_id) == 256


# -- timestamps -------------------------------------------------------------

@pytest.mark.parametrize(
    "value, expected",
    [
        ("2025-04-05T10:23:45Z", 1743848625.0),
        ("2025-04-05T10:23:45.5+00:00", 1743848625.5),
        ("2025-04-05T12:23:45+02:00", 1743848625.0),
        ("2025-04-05T10:23:45.123456789Z", 1743848625.123456),
        ("2025-04-05 10:23:45", 1743848625.0),  # no zone: UTC
        (1743848625, 1743848625.0),
        (1743848625123, 1743848625.123),
        (1743848625123456, 1743848625.123456),
        (1743848625123456789, 1743848625.123456789),
        ("yesterday", None),
        (-5, None),
        ([], None),
    ],
)
def test_timestamps(value, expected):
    stamp = request(timestamp=value).timestamp
    assert stamp == (pytest.approx(expected) if expected is not None else None)
