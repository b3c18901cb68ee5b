"""The whole chain from a real model: the example Qwen2 service -> its request log -> analyze and /metrics.

One seeded load (examples/inference_server/loadgen.py, a real process speaking
HTTP) runs against the example service (a real process: uvicorn, the tiny
randomly initialised Qwen2ForCausalLM on CPU, its request queue, wrapped in
``qwen_fluent.instrument.RequestLogMiddleware``). The load generator's JSON is
the ground truth: what it sent and what the service answered, request by
request. Then:

* every stdout line of the service is one JSON request line, one per request
  sent, and each carries the status, HTTP status, token counts and queue and
  inference times the client was given;
* ``qwen-fluent analyze`` on that log counts the same requests by status and
  the same token sums, with numpy's percentiles of the logged times;
* ``qwen-fluent send`` ships the log over Forward (acks on) to a real
  ``qwen-fluent serve`` process, whose /metrics counts the same requests by
  status and the same token sums per status.

Cancelled requests (the client hangs up mid-stream) are the one place where the
client cannot know the truth: the service generated more tokens than the client
read. Their token counts are held to the log (and to at least what the client
read); everything else is held to what the client saw.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import math
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.net import free_port

pytestmark = pytest.mark.example_service

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inference_server"
QWEN = [sys.executable, "-m", "qwen_fluent"]
STATUSES = ("success", "error", "client_error", "timeout", "cancelled", "unknown")

#: The load: more clients (6) than engine workers (2), so requests wait in the queue; one in eight bad,
#: a few hung up on. 80 requests take 5-15 s on a loaded 2-core machine.
LOAD = ["--requests", "80", "--concurrency", "6", "--seed", "15", "--bad", "0.12", "--cancel", "0.05",
        "--stream", "0.5", "--include-usage", "0.5", "--prompt-tokens", "60", "--output-tokens", "20"]
#: Seconds for the service to import torch and build the model (6-8 s idle, 20+ under load).
START_TIMEOUT = 180.0


@dataclass
class Served:
    """The module's one load: the service's stdout log, the load generator's results, its parsed lines."""

    log: Path
    truth: list[dict[str, Any]]
    lines: list[dict[str, Any]]
    stderr: str


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def service(tmp: Path, *flags: str) -> Iterator[str]:
    """The example service as a process on a free port, stdout to ``tmp/service.log``; yields its URL.

    On leaving: SIGTERM, and the process must stop cleanly. uvicorn shuts down gracefully on SIGTERM,
    then re-raises the signal (exit by signal, as a container runtime expects); anything else, or a
    traceback on stderr, is a crash.
    """
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed in {sys.executable}: run "
                    "scripts/test-example-service (these tests fail rather than skip)")
    log, err = tmp / "service.log", tmp / "service.err"
    with log.open("wb") as out, err.open("wb") as errf:
        proc = subprocess.Popen([sys.executable, str(EXAMPLE / "server.py"), "--port", "0", *flags],
                                stdout=out, stderr=errf, cwd=ROOT)
    try:
        def listening() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"the service exited {proc.returncode}:\n{err.read_text()}")
            for line in err.read_text().splitlines():
                if line.startswith("listening on "):
                    return line.split()[2]
            return None

        yield wait_for(listening, START_TIMEOUT, "the service to listen")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert proc.returncode in (0, -signal.SIGTERM), err.read_text()
    assert "Traceback" not in err.read_text(), err.read_text()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    tmp = tmp_path_factory.mktemp("example_service")
    truth_path = tmp / "truth.json"
    with service(tmp, "--concurrency", "2", "--max-queue", "64", "--seed", "0") as url:
        gen = subprocess.run([sys.executable, str(EXAMPLE / "loadgen.py"), "--url", url, "--out", str(truth_path),
                              "--quiet", *LOAD], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
        assert gen.returncode == 0, gen.stderr
    truth = json.loads(truth_path.read_text())["results"]
    log = tmp / "service.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every stdout line is one JSON object
    return Served(log, truth, lines, (tmp / "service.err").read_text())


def by_status(rows) -> dict[str, int]:
    counts = collections.Counter(r["status"] for r in rows)
    return {s: counts.get(s, 0) for s in STATUSES}


def expected_tokens(served: Served) -> dict[str, tuple[int, int]]:
    """(input, output) token sums per status: from what the client was given, except for cancelled
    requests, whose counts only the service knows (held to the log by test_log_is_the_truth)."""
    sums: dict[str, list[int]] = {s: [0, 0] for s in STATUSES}
    lines = {line["request_id"]: line for line in served.lines}
    for r in served.truth:
        if r["status"] == "cancelled":
            source = lines[r["request_id"]]
            sums["cancelled"][0] += source.get("input_tokens", 0)
            sums["cancelled"][1] += source.get("output_tokens", 0)
        elif r["usage"]:
            sums[r["status"]][0] += r["usage"]["prompt_tokens"]
            sums[r["status"]][1] += r["usage"]["completion_tokens"]
        elif r["stream"] and r["status"] == "success":
            sums["success"][1] += r["content_chunks"]  # no usage asked for: the chunks are the count
    return {s: (v[0], v[1]) for s, v in sums.items()}


def test_the_load_is_the_mix_it_should_be(served: Served):
    """The seeded load reached every kind of answer, so the checks below are not vacuous."""
    kinds = collections.Counter(r["kind"] for r in served.truth)
    statuses = by_status(served.truth)
    assert len(served.truth) == 80
    assert statuses["success"] >= 50 and statuses["client_error"] >= 5 and statuses["cancelled"] >= 1
    assert statuses["error"] == 0, [r for r in served.truth if r["status"] == "error"]
    assert {"invalid_json", "no_messages", "bad_max_tokens", "unknown_model", "context_too_long",
            "wrong_method"} <= set(kinds)
    assert any(r["stream"] and r["usage"] for r in served.truth)
    assert any(r["stream"] and not r["usage"] and r["status"] == "success" for r in served.truth)
    assert any(not r["stream"] and r["usage"] for r in served.truth)
    # The queue is real: with 6 clients on 2 workers, requests waited, and the client was told how long.
    waits = [r["queue_time_ms"] for r in served.truth if r["queue_time_ms"] is not None]
    assert max(waits) > 20.0, waits


def test_log_is_the_truth(served: Served):
    """One line per request sent, and each line says what the client was given."""
    lines = {line["request_id"]: line for line in served.lines}
    assert len(lines) == len(served.lines) == len(served.truth)
    assert set(lines) == {r["request_id"] for r in served.truth}
    for r in served.truth:
        line = lines[r["request_id"]]
        where = f"{r['request_id']} ({r['kind']}): {line}"
        assert line["status"] == r["status"], where
        assert line["http_status"] == r["http_status"], where
        assert line["method"] == r["method"] and line["path"] == "/v1/chat/completions", where
        assert line["stream"] is r["stream"], where
        assert line["total_time_ms"] >= 0, where
        assert "prompt" not in line and "content" not in line and "messages" not in line, where
        if r["status"] == "client_error":
            assert "input_tokens" not in line and "output_tokens" not in line, where
            assert line.get("error_type") == r["error_type"], where
            continue
        # Every 200 carried the engine's queue time, and the line carries the same number.
        assert line["queue_time_ms"] == pytest.approx(r["queue_time_ms"], abs=1e-3), where
        assert line["queue_time_ms"] <= line["total_time_ms"], where
        if r["usage"]:
            assert line["input_tokens"] == r["usage"]["prompt_tokens"], where
            assert line["output_tokens"] == r["usage"]["completion_tokens"], where
            assert line["tokens_estimated"] is False, where
        elif r["status"] == "success":
            assert "input_tokens" not in line, where
            assert line["output_tokens"] == r["content_chunks"], where
            assert line["tokens_estimated"] is True, where
        else:  # cancelled: the service sent at least what the client read before hanging up
            assert r["status"] == "cancelled", where
            assert line["output_tokens"] >= r["content_chunks"] >= 1, where
        if r["stream"]:
            # Headers leave before generation ends: no inference time rather than a made-up one.
            assert "inference_time_ms" not in line, where
            assert line["time_to_first_token_ms"] <= line["total_time_ms"], where
        else:
            assert line["inference_time_ms"] == pytest.approx(r["inference_time_ms"], abs=1e-3), where
            assert line["model"] == "qwen2-tiny-random", where


def test_analyze_counts_what_the_service_returned(served: Served):
    """``qwen-fluent analyze`` (a process) on the service's stdout log."""
    proc = subprocess.run(QWEN + ["analyze", str(served.log), "--format", "json", "--by", "status"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["requests"] == len(served.truth)
    assert report["unparsed_lines"] == 0
    assert report["by_status"] == by_status(served.truth)
    expected = expected_tokens(served)
    assert report["input_tokens"]["sum"] == sum(v[0] for v in expected.values())
    assert report["output_tokens"]["sum"] == sum(v[1] for v in expected.values())
    groups = {g["key"]: g for g in report["groups"]}
    for status, (inputs, outputs) in expected.items():
        if status not in groups:
            assert by_status(served.truth)[status] == 0
            continue
        assert groups[status]["requests"] == by_status(served.truth)[status]
        if inputs:
            assert groups[status]["input_tokens"]["sum"] == inputs, status
        if outputs:
            assert groups[status]["output_tokens"]["sum"] == outputs, status
    # Its percentiles are numpy's over the logged end-to-end times (held as float32 seconds).
    total_s = np.array([line["total_time_ms"] / 1000 for line in served.lines], dtype=np.float32)
    for q in (50, 90, 99):
        assert report["total_time_seconds"][f"p{q}"] == pytest.approx(float(np.percentile(total_s, q)), rel=1e-5)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def test_forward_to_metrics_counts_what_the_service_returned(served: Served, tmp_path):
    """The log over Forward (``qwen-fluent send``, acks on) to ``qwen-fluent serve``: /metrics agrees."""
    forward_port, metrics_port = free_port(), free_port()
    receiver = subprocess.Popen(
        QWEN + ["serve", "--host", "127.0.0.1", "--port", str(forward_port), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(metrics_port), "--no-gpu"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.err").open("wb"), cwd=ROOT)
    try:
        def ready() -> bool:
            if receiver.poll() is not None:
                raise AssertionError(f"qwen-fluent serve exited {receiver.returncode}: "
                                     f"{(tmp_path / 'serve.err').read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, 60, "qwen-fluent serve to be ready")
        sent = subprocess.run(
            QWEN + ["send", str(served.log), "--host", "127.0.0.1", "--port", str(forward_port), "--gzip",
                    "--ack", "--tag", "llm.inference"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        want = len(served.truth)
        samples = wait_for(lambda: (s := scrape(metrics_port)) and total(s, "qwen_requests_total") >= want and s,
                           30, f"{want} requests on /metrics")
    finally:
        receiver.send_signal(signal.SIGTERM)
        try:
            receiver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            receiver.kill()
            receiver.wait()
    assert total(samples, "qwen_requests_total") == want
    assert total(samples, "qwen_fluent_records_total", outcome="accepted") == want
    statuses = by_status(served.truth)
    for status, count in statuses.items():
        assert total(samples, "qwen_requests_total", status=status) == count, status
    for status, (inputs, outputs) in expected_tokens(served).items():
        assert total(samples, "qwen_input_tokens_total", status=status) == inputs, status
        assert total(samples, "qwen_output_tokens_total", status=status) == outputs, status
    # Per-request histograms: one observation per request that carried the field.
    with_input = sum(1 for line in served.lines if "input_tokens" in line)
    assert total(samples, "qwen_request_input_tokens_count") == with_input
    assert total(samples, "qwen_request_duration_seconds_count") == want
    logged_s = sum(line["total_time_ms"] for line in served.lines) / 1000
    assert math.isclose(total(samples, "qwen_request_duration_seconds_sum"), logged_s, rel_tol=1e-6)


def test_a_full_queue_is_refused_with_503_and_logged_as_error(tmp_path):
    """One worker, a queue of one: of four long requests sent at once, one runs, one waits, and the
    rest are refused at once with 503 (a server-side failure: ``error``), not queued without bound."""
    import httpx

    body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 400, "ignore_eos": True}

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return list(await asyncio.gather(*(
                client.post("/v1/chat/completions", json=body, headers={"x-request-id": f"burst-{i}"})
                for i in range(4))))

    with service(tmp_path, "--concurrency", "1", "--max-queue", "1") as url:
        responses = asyncio.run(burst(url))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(503) >= 1 and codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.json()["error"]["type"] == "ServiceUnavailableError" for r in refused)
    served_ok = [r for r in responses if r.status_code == 200]
    assert all(r.json()["usage"]["completion_tokens"] == 400 for r in served_ok)
    lines = {line["request_id"]: line for line in map(json.loads, (tmp_path / "service.log").read_text().splitlines())}
    assert set(lines) == {f"burst-{i}" for i in range(4)}
    for i, r in enumerate(responses):  # gather keeps the order the requests were made in
        assert r.headers["x-request-id"] == f"burst-{i}"  # echoed on the 503s too
        line = lines[f"burst-{i}"]
        assert line["http_status"] == r.status_code
        assert line["status"] == ("success" if r.status_code == 200 else "error")
        if r.status_code == 200:
            assert line["output_tokens"] == 400 and line["queue_time_ms"] >= 0
        else:
            assert "queue_time_ms" not in line and "output_tokens" not in line
    # Where one ran while another waited (the usual order: 2 served, 2 refused), the one that waited
    # was told so: it waited for the other's 400 tokens.
    waits = sorted(float(r.headers["x-queue-time-ms"]) for r in served_ok)
    assert len(waits) == 1 or waits[1] > 20.0, waits
