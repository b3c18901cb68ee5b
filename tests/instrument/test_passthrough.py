"""The middleware changes nothing the client or the app sees: same bytes, same request body, still streaming."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx
import pytest

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello there"}]

CASES = [
    pytest.param(CHAT, {"model": "m", "messages": MESSAGES, "max_tokens": 5}, id="json-usage"),
    pytest.param(CHAT, {"model": "m", "messages": MESSAGES, "x_scenario": "no_usage"}, id="json-no-usage"),
    pytest.param(CHAT, {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 20}, id="sse"),
    pytest.param(CHAT, {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
                 id="sse-usage"),
    pytest.param("/v1/completions", {"model": "m", "prompt": "a", "stream": True, "max_tokens": 3}, id="sse-text"),
    pytest.param(CHAT, {"model": "m", "messages": MESSAGES, "x_scenario": "bad_request"}, id="400"),
    pytest.param(CHAT, {"model": "m", "messages": MESSAGES, "x_scenario": "unavailable"}, id="503"),
    pytest.param(CHAT, {"model": "m", "messages": MESSAGES, "x_timings": True}, id="timing-headers"),
    pytest.param(CHAT, {"model": "m", "messages": [{"role": "user", "content": "é" * 300_000}], "max_tokens": 1},
                 id="large-request"),
]


def _exchange(client: httpx.Client, path: str, body: bytes, chunked: bool) -> tuple[int, list[tuple[str, str]], bytes]:
    content: Any = body
    if chunked:  # several http.request messages, a Transfer-Encoding: chunked upload
        content = iter([body[i:i + 1000] for i in range(0, len(body), 1000)])
    with client.stream("POST", path, content=content, headers={"content-type": "application/json"}) as response:
        raw = b"".join(response.iter_raw())
        headers = [(k, v) for k, v in response.headers.multi_items() if k != "date"]
        return response.status_code, headers, raw


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked-upload"])
@pytest.mark.parametrize(("path", "body"), CASES)
def test_response_bytes_and_request_body_are_unchanged(serve, log, path, body, chunked):
    plain = serve(wrap=False)
    wrapped = serve()
    data = json.dumps(body).encode()
    expected = _exchange(plain, path, data, chunked)
    got = _exchange(wrapped, path, data, chunked)
    assert got == expected
    assert dict(got[1])["x-body-sha256"] == hashlib.sha256(data).hexdigest()  # the app read what was sent
    assert log.one()["path"] == path


def _arrivals(client: httpx.Client) -> list[float]:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 6, "x_chunk_delay": 0.15}
    times = []
    with client.stream("POST", CHAT, json=body) as response:
        for line in response.iter_lines():
            if '"tok' in line:
                times.append(time.perf_counter())
    return times


def test_a_stream_stays_a_stream(serve, log):
    # Six chunks 150 ms apart: each must reach the client as it is produced, not at the end. A
    # buffered body would arrive in one burst (spread ~0); a late scheduler only widens the spread.
    for client in (serve(wrap=False), serve()):
        times = _arrivals(client)
        assert len(times) == 6
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        assert times[-1] - times[0] > 0.45, gaps  # 5 gaps of 150 ms = 0.75 s when streamed
        assert gaps[2] > 0.075, gaps  # the median gap: arrivals are spread, not bunched
    line = log.one()
    assert line["time_to_first_token_ms"] < line["total_time_ms"] - 600  # 5 gaps of 150 ms after the first token
