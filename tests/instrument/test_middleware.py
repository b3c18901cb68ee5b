"""RequestLogMiddleware behind a real uvicorn, driven by httpx: every line checked field by field.

Each test sends real HTTP requests to the fake OpenAI server (tests/instrument/openai_app.py)
and compares the line the middleware wrote with what the server actually did: the usage it
returned, the status it answered, the chunks it streamed, the exception it raised.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "tell me a story about seven dragons"}]  # 7 words + 3 = 10 prompt tokens
PROMPT_TOKENS = 10


def check(line: dict[str, Any], expected: dict[str, Any], *, elapsed_ms: float,
          ttft_ms: tuple[float, float] | None = None) -> None:
    """Every key of the line is expected (by value) or a timing (checked against ``elapsed_ms``)."""
    timing = {"timestamp", "total_time_ms"} | ({"time_to_first_token_ms"} if ttft_ms else set())
    assert set(line) == set(expected) | timing, f"keys differ: {sorted(set(line) ^ (set(expected) | timing))}"
    for key, value in expected.items():
        assert line[key] == value, f"{key}: {line[key]!r} != {value!r}"
        assert type(line[key]) is type(value), key
    stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 30
    assert line["timestamp"].endswith("Z")
    assert 0 < line["total_time_ms"] <= elapsed_ms
    if ttft_ms:
        low, high = ttft_ms
        assert low <= line["time_to_first_token_ms"] <= min(high, line["total_time_ms"])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1000.0


def test_non_streamed_with_usage(serve, log):
    client = serve()
    response, elapsed = timed(client.post, CHAT, json={"model": "qwen2.5-7b", "messages": MESSAGES, "max_tokens": 7},
                              headers={"x-test-id": "abc"})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 7
    check(log.one(), {"request_id": "chatcmpl-abc", "method": "POST", "path": CHAT, "model": "qwen2.5-7b",
                      "stream": False, "input_tokens": PROMPT_TOKENS, "output_tokens": 7, "tokens_estimated": False,
                      "status": "success", "http_status": 200}, elapsed_ms=elapsed)


def test_request_id_header_wins_and_model_comes_from_the_response(serve, log):
    client = serve()
    response = client.post(COMPLETIONS, json={"model": "alias", "prompt": "one two three", "max_tokens": 2},
                           headers={"X-Request-Id": "trace-42"})
    assert response.json()["model"] == "alias"
    line = log.one()
    assert line["request_id"] == "trace-42" and line["model"] == "alias"
    assert (line["input_tokens"], line["output_tokens"], line["path"]) == (3, 2, COMPLETIONS)


def test_non_streamed_without_usage_leaves_the_counts_out(serve, log):
    client = serve()
    response, elapsed = timed(client.post, CHAT, json={"model": "m", "messages": MESSAGES, "x_scenario": "no_usage"})
    assert "usage" not in response.json()
    check(log.one(), {"request_id": "chatcmpl-test", "method": "POST", "path": CHAT, "model": "m", "stream": False,
                      "status": "success", "http_status": 200}, elapsed_ms=elapsed)


def _stream(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[list[bytes], float, float]:
    """The SSE data lines, the ms to the first content line, and the ms to the end."""
    start = time.perf_counter()
    first = None
    lines = []
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:].encode())
                if first is None and b'"tok' in line.encode():
                    first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return lines, (first - start) * 1000.0, (end - start) * 1000.0


def test_stream_with_include_usage_takes_the_final_chunk(serve, log):
    client = serve()
    body = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 6, "x_first_delay": 0.25,
            "stream_options": {"include_usage": True}}
    events, first_ms, elapsed = _stream(client, CHAT, body)
    usage = json.loads(events[-2])["usage"]
    assert events[-1] == b"[DONE]" and usage["completion_tokens"] == 6
    check(log.one(), {"request_id": "chatcmpl-test", "method": "POST", "path": CHAT, "model": "m", "stream": True,
                      "input_tokens": PROMPT_TOKENS, "output_tokens": 6, "tokens_estimated": False,
                      "status": "success", "http_status": 200},
          elapsed_ms=elapsed, ttft_ms=(250.0, first_ms))


def test_stream_without_usage_counts_content_chunks(serve, log):
    client = serve()
    body = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 9, "x_first_delay": 0.1}
    events, first_ms, elapsed = _stream(client, CHAT, body)
    # role chunk + 9 content chunks + finish chunk + [DONE]: only the 9 are tokens
    assert len(events) == 12 and all(b'"usage"' not in e for e in events)
    check(log.one(), {"request_id": "chatcmpl-test", "method": "POST", "path": CHAT, "model": "m", "stream": True,
                      "output_tokens": 9, "tokens_estimated": True, "status": "success", "http_status": 200},
          elapsed_ms=elapsed, ttft_ms=(100.0, first_ms))


def test_completions_stream_counts_text_chunks(serve, log):
    client = serve()
    _, first_ms, elapsed = _stream(client, COMPLETIONS, {"model": "m", "prompt": "a b", "stream": True,
                                                              "max_tokens": 4})
    check(log.one(), {"request_id": "cmpl-test", "method": "POST", "path": COMPLETIONS, "model": "m", "stream": True,
                      "output_tokens": 4, "tokens_estimated": True, "status": "success", "http_status": 200},
          elapsed_ms=elapsed, ttft_ms=(0.0, first_ms))


def test_4xx_is_a_client_error_with_the_servers_error_type(serve, log):
    client = serve()
    response, elapsed = timed(client.post, CHAT, json={"model": "m", "messages": MESSAGES, "stream": True,
                                                       "x_scenario": "bad_request"})
    assert response.status_code == 400
    line = log.one()
    assert line["request_id"].startswith("req_") and len(line["request_id"]) == 36  # generated: no id anywhere
    del line["request_id"]
    check(line, {"method": "POST", "path": CHAT, "model": "m", "stream": True, "status": "client_error",
                 "http_status": 400, "error_type": "BadRequestError"}, elapsed_ms=elapsed)


def test_5xx_is_an_error(serve, log):
    client = serve()
    response, elapsed = timed(client.post, COMPLETIONS, json={"model": "m", "prompt": "x", "x_scenario": "unavailable"},
                              headers={"x-request-id": "r-503"})
    assert response.status_code == 503
    check(log.one(), {"request_id": "r-503", "method": "POST", "path": COMPLETIONS, "model": "m", "stream": False,
                      "status": "error", "http_status": 503, "error_type": "ServiceUnavailableError"},
          elapsed_ms=elapsed)


def test_exception_before_the_response_is_a_500_error_named_by_its_class(serve, log):
    client = serve()
    response, elapsed = timed(client.post, CHAT, json={"model": "m", "messages": MESSAGES, "x_scenario": "raise_before"},
                              headers={"x-request-id": "boom"})
    assert response.status_code == 500
    check(log.one(), {"request_id": "boom", "method": "POST", "path": CHAT, "model": "m", "stream": False,
                      "status": "error", "http_status": 500, "error_type": "EngineCrashed"}, elapsed_ms=elapsed)


def test_exception_after_the_last_byte_keeps_the_answers_status(serve, log):
    client = serve()
    response = client.post(CHAT, json={"model": "m", "messages": MESSAGES, "x_scenario": "raise_after"})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 5
    line = log.one()
    assert (line["status"], line["http_status"], line["output_tokens"]) == ("success", 200, 5)
    assert "error_type" not in line


def test_exception_mid_stream_is_an_error_after_a_200(serve, log):
    client = serve()
    received = []
    start = time.perf_counter()
    with pytest.raises(httpx.RemoteProtocolError):  # the server drops the connection mid-body
        with client.stream("POST", CHAT, json={"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 8,
                                               "x_scenario": "raise_midstream"}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                received.append(line)
    elapsed = (time.perf_counter() - start) * 1000.0
    assert sum('"tok' in line for line in received) == 2
    check(log.one(), {"request_id": "chatcmpl-test", "method": "POST", "path": CHAT, "model": "m", "stream": True,
                      "output_tokens": 2, "tokens_estimated": True, "status": "error", "http_status": 200,
                      "error_type": "EngineCrashed"}, elapsed_ms=elapsed, ttft_ms=(0.0, elapsed))


def test_error_event_in_the_stream_is_an_error(serve, log):
    client = serve()
    events, first_ms, elapsed = _stream(client, CHAT, {"model": "m", "messages": MESSAGES, "stream": True,
                                                       "max_tokens": 8, "x_scenario": "error_event"})
    assert json.loads(events[-2])["error"]["type"] == "InternalServerError"
    check(log.one(), {"request_id": "chatcmpl-test", "method": "POST", "path": CHAT, "model": "m", "stream": True,
                      "output_tokens": 2, "tokens_estimated": True, "status": "error", "http_status": 200,
                      "error_type": "InternalServerError"}, elapsed_ms=elapsed, ttft_ms=(0.0, first_ms))


def test_client_disconnect_mid_stream_is_cancelled(serve, log):
    client = serve()
    seen = 0
    start = time.perf_counter()
    with client.stream("POST", CHAT, json={"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 200,
                                           "x_chunk_delay": 0.02}) as response:
        for line in response.iter_lines():
            seen += '"tok' in line
            if seen == 3:
                break  # leaving the block closes the connection mid-stream
    line = log.one()
    elapsed = (time.perf_counter() - start) * 1000.0
    sent = line.pop("output_tokens")
    assert 3 <= sent < 200, sent  # what the server had streamed when it noticed; never the full 200
    check(line, {"request_id": "chatcmpl-test", "method": "POST", "path": CHAT, "model": "m", "stream": True,
                 "tokens_estimated": True, "status": "cancelled", "http_status": 200},
          elapsed_ms=elapsed, ttft_ms=(0.0, elapsed))


def test_only_the_configured_paths_are_logged(serve, log):
    client = serve(paths=["/v1/completions"])
    assert client.get("/v1/models").status_code == 200
    assert client.post(CHAT, json={"model": "m", "messages": MESSAGES}).status_code == 200
    assert client.post(COMPLETIONS, json={"model": "m", "prompt": "x"}).status_code == 200
    assert log.one()["path"] == COMPLETIONS
    log.assert_no_more()


def test_queue_and_inference_time_come_from_response_headers(serve, log):
    client = serve()
    client.post(CHAT, json={"model": "m", "messages": MESSAGES, "x_timings": True})
    line = log.one()
    assert (line["queue_time_ms"], line["inference_time_ms"]) == (12.5, 340.0)
    client.post(CHAT, json={"model": "m", "messages": MESSAGES})  # no headers: left out, not invented
    line = log.one()
    assert "queue_time_ms" not in line and "inference_time_ms" not in line


def test_a_stream_reports_its_timings_through_request_state(serve, log):
    client = serve()
    _stream(client, CHAT, {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 3, "x_timings": True,
                           "x_state_timings": True})
    line = log.one()
    assert (line["queue_time_ms"], line["inference_time_ms"]) == (1.5, 55.0)  # the state, set last, wins


def test_header_names_are_configurable(serve, log):
    client = serve(queue_header="X-Engine-Queue", inference_header="x-none")
    client.post(CHAT, json={"model": "m", "messages": MESSAGES, "x_timings": True})
    line = log.one()
    assert line["queue_time_ms"] == 7.0 and "inference_time_ms" not in line


def test_a_large_request_body_passes_untouched_and_the_model_comes_from_the_response(serve, log):
    client = serve(environ={"QWEN_FLUENT_INSTRUMENT_MAX_REQUEST_BODY": "4096"})
    big = [{"role": "user", "content": "word " * 40_000}]  # 200 KB, far over the 4 KiB copy bound
    response = client.post(CHAT, json={"model": "big-model", "messages": big, "max_tokens": 3})
    line = log.one()
    assert response.status_code == 200
    assert (line["model"], line["input_tokens"], line["output_tokens"]) == ("big-model", 40_003, 3)
    assert line["stream"] is False  # not read from the body (over the bound): from the response's content type


def test_concurrent_requests_each_get_their_own_line(serve, log):
    from concurrent.futures import ThreadPoolExecutor

    client = serve()

    def one(i: int) -> tuple[str, int]:
        body = {"model": f"m{i % 3}", "messages": MESSAGES, "stream": i % 2 == 0, "max_tokens": 1 + i,
                "x_chunk_delay": 0.005, "stream_options": {"include_usage": i % 4 == 0}}
        response = client.post(CHAT if i % 5 else COMPLETIONS, json=body, headers={"x-request-id": f"c-{i}"})
        assert response.status_code == 200
        return f"c-{i}", 1 + i

    with ThreadPoolExecutor(12) as pool:
        expected = dict(pool.map(one, range(24)))
    lines = {line["request_id"]: line for line in log.next(24)}
    assert set(lines) == set(expected)
    for rid, tokens in expected.items():
        i = int(rid[2:])
        line = lines[rid]
        assert (line["output_tokens"], line["model"], line["stream"]) == (tokens, f"m{i % 3}", i % 2 == 0), line
        assert line["tokens_estimated"] is (i % 2 == 0 and i % 4 != 0)
        assert line["path"] == (CHAT if i % 5 else COMPLETIONS)
