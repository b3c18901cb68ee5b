"""The GPU memory probe against the fake NVML, and the body readers on their own (any split, any size)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_fluent.instrument import GpuMemoryProbe, RequestLogMiddleware
from qwen_fluent.instrument.gpu import descendants
from qwen_fluent.instrument.parse import (
    EventStream,
    JsonBody,
    RequestBody,
    Summary,
    scan_value,
)
from tests.instrument.openai_app import make_app
from tests.support.fake_nvml import FakeNvml

MIB = 2**20


def test_nvml_sums_this_process_and_its_children_on_every_gpu():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in descendants(os.getpid()):
            assert time.monotonic() < deadline, "the child never appeared under /proc/<pid>/task/*/children"
            time.sleep(0.01)
        nvml = FakeNvml(gpus=2)
        nvml.set_processes(0, [(os.getpid(), 100 * MIB), (999_999_999, 7000 * MIB)])  # a stranger: not ours
        nvml.set_processes(1, [(child.pid, 2048 * MIB), (os.getpid(), None)])  # None: NVML could not tell
        assert GpuMemoryProbe("nvml", nvml=nvml)() == 2148 * MIB
        assert GpuMemoryProbe("auto", nvml=nvml)() == 2148 * MIB  # no torch in this process: NVML
    finally:
        child.kill()
        child.wait()


def test_nvml_is_read_at_most_once_per_refresh_interval():
    now = [100.0]
    nvml = FakeNvml(gpus=1)
    nvml.set_processes(0, [(os.getpid(), 10 * MIB)])
    probe = GpuMemoryProbe("nvml", nvml=nvml, refresh_s=5.0, clock=lambda: now[0])
    assert [probe() for _ in range(50)] == [10 * MIB] * 50
    assert probe.nvml_reads == 1
    nvml.set_processes(0, [(os.getpid(), 20 * MIB)])
    now[0] += 5.0
    assert probe() == 20 * MIB and probe.nvml_reads == 2


def test_no_nvml_no_process_of_ours_or_off_leaves_the_field_out():
    assert GpuMemoryProbe("nvml", nvml=FakeNvml(available=False))() is None
    stranger = FakeNvml(gpus=1)
    stranger.set_processes(0, [(999_999_999, 10 * MIB)])  # what a container without hostPID sees
    assert GpuMemoryProbe("nvml", nvml=stranger)() is None
    nvml = FakeNvml(gpus=1)
    nvml.set_processes(0, [(os.getpid(), 10 * MIB)])
    assert GpuMemoryProbe("off", nvml=nvml)() is None
    assert GpuMemoryProbe("torch", nvml=nvml)() is None  # torch not imported here: never imported by us
    assert "torch" not in sys.modules
    assert nvml.calls["nvmlInit"] == 0


def test_one_failing_gpu_is_skipped():
    nvml = FakeNvml(gpus=2)
    nvml.set_processes(0, [(os.getpid(), 10 * MIB)])
    nvml.set_processes(1, [(os.getpid(), 30 * MIB)])
    nvml.fail(0, "nvmlDeviceGetComputeRunningProcesses", 15)  # GPU_IS_LOST
    assert GpuMemoryProbe("nvml", nvml=nvml)() == 30 * MIB


def test_the_probe_feeds_the_line(serve, log):
    nvml = FakeNvml(gpus=1)
    nvml.set_processes(0, [(os.getpid(), 18432 * MIB)])
    client = serve(gpu_memory=GpuMemoryProbe("nvml", nvml=nvml))
    client.post("/v1/completions", json={"model": "m", "prompt": "x"})
    assert log.one()["gpu_memory_mb"] == 18432.0


# -- the body readers ---------------------------------------------------------------------------------


def _chunk(i: int, usage: bool = False) -> bytes:
    doc = {"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": {"content": f"t{i}\n\"x\""}}]}
    if usage:
        doc = {"id": "chatcmpl-1", "model": "m", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}
    return b"data: " + json.dumps(doc).encode() + b"\r\n\r\n"


STREAM = (b": keep-alive comment\n\n"
          + b'data: {"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
          + b"".join(_chunk(i) for i in range(7)) + _chunk(0, usage=True) + b"data: [DONE]\n\n")


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_an_event_stream_reads_the_same_whatever_the_splits(cuts):
    bounds = sorted(set(cuts) | {0, len(STREAM)})
    summary = Summary()
    reader = EventStream(256 * 1024)
    for n, (a, b) in enumerate(zip(bounds, bounds[1:])):
        reader.feed(STREAM[a:b], float(n), summary)
    assert reader.done and reader.bad_events == 0
    assert (summary.response_id, summary.model, summary.input_tokens, summary.output_tokens) == ("chatcmpl-1", "m", 11, 7)
    assert summary.content_chunks == 7 and not summary.body_error
    first_at = STREAM.index(b"t0") + 1  # the split that completes the first content line gives its time
    assert summary.first_content == float(next(i for i, b in enumerate(bounds[1:]) if b > STREAM.index(b"\n", first_at)))


def test_an_overlong_event_line_is_skipped_not_buffered():
    reader = EventStream(1024)
    summary = Summary()
    reader.feed(b"data: " + b"x" * 5000, 0.0, summary)  # no newline yet, already over the bound
    assert reader._pending == b""
    reader.feed(b"y" * 5000, 1.0, summary)  # still the same line: nothing kept
    assert reader._pending == b""
    reader.feed(b"y" * 50 + b"\n\n" + _chunk(1), 2.0, summary)
    assert summary.content_chunks == 1 and reader.bad_events == 0


def test_json_body_over_the_bound_keeps_head_and_tail():
    text = "word " * 100_000  # a 500 KB completion, with a decoy key inside the text
    doc = {"id": "cmpl-big", "model": "m7", "choices": [{"text": text + '"usage": {"completion_tokens": 1}'}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 100_000}}
    data = json.dumps(doc).encode()
    body = JsonBody(64 * 1024)
    for i in range(0, len(data), 3000):
        body.feed(data[i:i + 3000])
    summary = Summary()
    body.finish(summary)
    assert (summary.response_id, summary.model, summary.input_tokens, summary.output_tokens) == ("cmpl-big", "m7", 3,
                                                                                                 100_000)
    assert len(body._tail) <= 2 * 64 * 1024 + 3000


def test_scan_value_skips_escaped_keys_and_broken_values():
    assert scan_value('{"a": "\\"usage\\": 5", "usage": {"x": 1}}', "usage") == {"x": 1}
    assert scan_value('..."usage": {"x": ', "usage") is None
    assert scan_value('"model":"q"', "model") == "q"


def test_request_body_reads_model_and_stream_only_when_whole_and_small():
    small = RequestBody(1024)
    small.feed(b'{"model": "m", "stre', True)
    small.feed(b'am": true, "messages": []}', False)
    assert (small.model, small.stream) == ("m", True)
    big = RequestBody(1024)
    big.feed(b'{"model": "m", "messages": ["' + b"x" * 2000 + b'"]}', False)
    assert (big.model, big.stream) == (None, None)
    odd = RequestBody(1024)
    odd.feed(b'{"model": 5, "stream": "yes"}', False)
    assert (odd.model, odd.stream) == (None, None)


def test_no_text_of_the_prompt_or_completion_reaches_a_line(serve, log):
    client = serve()
    secret_prompt = "PROMPT-SECRET-1234"
    for stream in (True, False):
        response = client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": secret_prompt}], "stream": stream, "max_tokens": 3})
        assert "tok0" in response.text  # the completion's text, as the fake server writes it
        assert log.one()["output_tokens"] == 3
    raw = log.path.read_text()
    assert secret_prompt not in raw and "tok0" not in raw


def test_middleware_is_not_an_http_middleware_function():
    # vLLM sends classes to add_middleware; this must stay a class, and construct from app alone.
    import inspect

    assert inspect.isclass(RequestLogMiddleware)
    assert RequestLogMiddleware(make_app(), environ={}).config.paths == ("/v1/chat/completions", "/v1/completions")
