"""How the middleware is loaded (vLLM's --middleware contract, add_middleware, wrapping), configured and
where its lines go (stdout, a logger, a file); and that a line becomes the receiver's RequestEvent."""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from qwen_fluent.instrument import (
    InstrumentConfig,
    InstrumentConfigError,
    RequestLogMiddleware,
)
from qwen_fluent.records import Normaliser, RequestEvent
from tests.instrument.openai_app import Served, build_like_vllm, make_app

ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "one two three"}]


def _post_until_up(url: str, **kwargs) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.post(url, timeout=30, **kwargs)
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.05)


def test_vllm_middleware_flag_writes_flushed_lines_to_stdout(tmp_path):
    # The server runs as vLLM runs it: a separate process, the middleware named on the command
    # line and built by add_middleware(cls) with no options, configured by the environment only.
    env = dict(os.environ, PYTHONPATH=str(ROOT), QWEN_FLUENT_INSTRUMENT_GPU_MEMORY="off",
               QWEN_FLUENT_INSTRUMENT_PATHS="/v1/chat/completions, /v1/completions")
    proc = subprocess.Popen([sys.executable, "-m", "tests.instrument.openai_app",
                             "--middleware", "qwen_fluent.instrument.RequestLogMiddleware"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        ready = proc.stderr.readline()
        assert ready.startswith("READY "), ready + proc.stderr.read()
        url = f"http://127.0.0.1:{int(ready.split()[1])}"
        response = _post_until_up(url + CHAT, json={"model": "served", "messages": MESSAGES, "max_tokens": 4},
                                  headers={"x-request-id": "vllm-1"})
        assert response.status_code == 200
        # Read while the server still runs: only a flushed line can arrive through the pipe now.
        line = json.loads(lines.get(timeout=10))
        assert line["request_id"] == "vllm-1" and line["model"] == "served" and line["status"] == "success"
        assert (line["input_tokens"], line["output_tokens"], line["http_status"]) == (6, 4, 200)
        assert "gpu_memory_mb" not in line  # QWEN_FLUENT_INSTRUMENT_GPU_MEMORY=off
        assert httpx.get(url + "/v1/models").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    rest = [json.loads(x) for x in lines.queue]
    assert rest == []  # /v1/models is not a logged path


def test_build_like_vllm_uses_add_middleware_for_the_class(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_FLUENT_INSTRUMENT_OUTPUT", str(tmp_path / "lines.log"))
    monkeypatch.setenv("QWEN_FLUENT_INSTRUMENT_GPU_MEMORY", "off")
    app = build_like_vllm(["qwen_fluent.instrument.RequestLogMiddleware"])
    assert [m.cls for m in app.user_middleware] == [RequestLogMiddleware]
    with Served(app) as served:
        # Inside Starlette's ServerErrorMiddleware now: an exception reaches us before any
        # response exists, and the line still says 500, as the client sees.
        response = httpx.post(served.url + CHAT, json={"model": "m", "messages": MESSAGES,
                                                        "x_scenario": "raise_before"})
        assert response.status_code == 500
        deadline = time.monotonic() + 10
        while not (tmp_path / "lines.log").exists() or not (tmp_path / "lines.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    line = json.loads((tmp_path / "lines.log").read_text())
    assert (line["status"], line["http_status"], line["error_type"]) == ("error", 500, "EngineCrashed")


def test_add_middleware_with_options_and_a_logger_output(tmp_path):
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.instrument.requests")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    app = make_app()
    app.add_middleware(RequestLogMiddleware, output=logger, paths=("/v1/chat/completions",), gpu_memory="off",
                       environ={})
    with Served(app) as served:
        assert httpx.post(served.url + CHAT, json={"model": "m", "messages": MESSAGES}).status_code == 200
        deadline = time.monotonic() + 10
        while not records:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert records[0].levelno == logging.INFO
    assert json.loads(records[0].getMessage())["model"] == "m"


def test_stderr_and_logger_by_name_from_the_environment(capsys):
    mw = RequestLogMiddleware(make_app(), environ={"QWEN_FLUENT_INSTRUMENT_OUTPUT": "stderr"}, gpu_memory="off")
    mw._sink('{"a":1}')
    assert capsys.readouterr().err == '{"a":1}\n'
    mw = RequestLogMiddleware(make_app(), environ={}, gpu_memory="off")  # default: stdout
    mw._sink('{"b":2}')
    assert capsys.readouterr().out == '{"b":2}\n'


def test_environment_settings_and_arguments(tmp_path):
    env = {"QWEN_FLUENT_INSTRUMENT_PATHS": "/generate,/v1/chat/completions",
           "QWEN_FLUENT_INSTRUMENT_QUEUE_HEADER": "X-Q", "QWEN_FLUENT_INSTRUMENT_MAX_RESPONSE_BODY": "2048",
           "QWEN_FLUENT_INSTRUMENT_GPU_MEMORY": "nvml"}
    config = InstrumentConfig.from_env(env)
    assert config.paths == ("/generate", "/v1/chat/completions")
    assert (config.queue_header, config.max_response_body, config.gpu_memory) == ("x-q", 2048, "nvml")
    assert InstrumentConfig.from_env(env, paths=["/x"], gpu_memory="off").paths == ("/x",)  # an argument wins


@pytest.mark.parametrize(("env", "named"), [
    ({"QWEN_FLUENT_INSTRUMENT_MAX_REQUEST_BODY": "lots"}, "QWEN_FLUENT_INSTRUMENT_MAX_REQUEST_BODY"),
    ({"QWEN_FLUENT_INSTRUMENT_MAX_REQUEST_BODY": "10"}, "max_request_body"),
    ({"QWEN_FLUENT_INSTRUMENT_GPU_MEMORY": "cuda"}, "gpu_memory"),
    ({"QWEN_FLUENT_INSTRUMENT_PATHS": "v1/chat"}, "paths"),
    ({"QWEN_FLUENT_INSTRUMENT_QUEUE_HEADER": "x queue"}, "queue_header"),
    ({"QWEN_FLUENT_INSTRUMENT_OUTPUT": "/nonexistent-dir/x.log"}, "cannot open"),
    ({"QWEN_FLUENT_INSTRUMENT_OUTPUT": "logger:"}, "logger"),
])
def test_bad_settings_fail_at_start_naming_the_setting(env, named):
    with pytest.raises(InstrumentConfigError, match=named):
        RequestLogMiddleware(make_app(), environ=env)


def test_a_failing_output_never_fails_the_request():
    class Closed:
        def write(self, text: str) -> None:
            raise OSError("stdout closed")

    mw = RequestLogMiddleware(make_app(), output=Closed(), gpu_memory="off", environ={})
    with Served(mw) as served:
        for _ in range(3):
            assert httpx.post(served.url + CHAT, json={"model": "m", "messages": MESSAGES}).status_code == 200
        deadline = time.monotonic() + 10
        while mw.write_errors < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert (mw.write_errors, mw.lines_written) == (3, 0)


def test_a_line_becomes_the_receivers_request_event(serve, log):
    client = serve(gpu_memory=lambda: 3 * 2**30)  # any callable: bytes of GPU memory
    with client.stream("POST", CHAT, json={"model": "qwen2.5-7b", "messages": MESSAGES, "stream": True,
                                           "max_tokens": 5, "x_timings": True, "x_first_delay": 0.05,
                                           "stream_options": {"include_usage": True}},
                       headers={"x-request-id": "req-norm"}) as response:
        response.read()
    line = log.one()
    assert line["gpu_memory_mb"] == 3072.0
    event = Normaliser()(json.loads(json.dumps(line)))
    assert type(event) is RequestEvent
    assert (event.status, event.http_status, event.error_type) == ("success", 200, "")
    assert (event.path, event.model, event.method, event.request_id) == (CHAT, "qwen2.5-7b", "POST", "req-norm")
    assert (event.input_tokens, event.output_tokens) == (6, 5)
    assert event.total_s == pytest.approx(line["total_time_ms"] / 1000)
    assert event.ttft_s == pytest.approx(line["time_to_first_token_ms"] / 1000)
    assert (event.queue_s, event.inference_s) == (pytest.approx(0.0125), pytest.approx(0.34))
    assert event.gpu_memory_bytes == 3 * 2**30
    assert event.timestamp == pytest.approx(time.time(), abs=30)
    # derived by the receiver from ttft and total: the decode time per token after the first
    assert event.tpot_s == pytest.approx((event.total_s - event.ttft_s) / 4)


@pytest.mark.parametrize(("scenario", "status"), [("bad_request", "client_error"), ("unavailable", "error"),
                                                  ("raise_before", "error"), ("error_event", "error")])
def test_failed_requests_keep_their_status_in_the_receiver(serve, log, scenario, status):
    client = serve()
    client.post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": scenario == "error_event",
                            "x_scenario": scenario})
    line = log.one()
    event = Normaliser()(line)
    assert type(event) is RequestEvent
    assert (event.status, event.http_status, event.error_type) == (status, line["http_status"], line["error_type"])


def test_every_setting_is_documented():
    from qwen_fluent.instrument.config import variables

    doc = (ROOT / "docs" / "instrument.md").read_text()
    for variable in variables():
        assert f"`{variable}`" in doc, variable


def test_the_overhead_benchmark_runs_and_prints_both_sides():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_instrument.py"), "--requests", "30",
                           "--rounds", "3", "--http-requests", "5", "--chunks", "4"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if " without " in line and " with " in line]
    assert len(rows) == 4, proc.stdout  # JSON and stream, in process and over HTTP
    assert all("ratio" in row and "overhead" in row for row in rows)
