"""``qwen-fluent serve --stdin`` as a user runs it: a real process fed through a real pipe, real signals.

The input is a seeded file whose every line's fate is known by construction
(docs/records.md): the article's request lines, the same lines wrapped by
docker's json-file driver and by CRI (containerd), plain log lines with a
level, JSON objects that are not a known shape (unrecognised), and lines that
start like JSON and are not (invalid). The counts on ``/metrics`` must be
exactly those.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from ..support.net import free_port
from ..support.truth import parse_text

QWEN = [sys.executable, "-m", "qwen_fluent"]
STATUSES = ("success", "error", "timeout")
#: Seconds a process has to start serving, or to exit after EOF or a signal.
SECONDS = 20.0


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return parse_text(reply.read())


def wait_metrics(port: int, done, seconds: float = SECONDS) -> dict:
    """Scrape until ``done(samples)`` holds (the process is still reading), or fail."""
    deadline = time.monotonic() + seconds
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
            if done(last):
                return last
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"metrics never reached the expected counts; last records: {records(last)}")


def records(samples: dict) -> dict[str, float]:
    return {dict(labels)["outcome"]: v for (name, labels), v in samples.items()
            if name == "qwen_fluent_records_total" and v}


def requests_by_status(samples: dict) -> dict[str, float]:
    out: Counter[str] = Counter()
    for (name, labels), value in samples.items():
        if name == "qwen_requests_total":
            out[dict(labels)["status"]] += value
    return {k: v for k, v in out.items() if v}


def seeded_lines(seed: int, n: int) -> tuple[bytes, dict[str, int], Counter[str]]:
    """``n`` lines of mixed shapes; the records outcome counts and requests by status they must give."""
    rng = random.Random(seed)
    lines: list[str] = []
    outcomes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for i in range(n):
        status = rng.choice(STATUSES)
        req = {"timestamp": "2025-04-05T10:23:45Z", "request_id": f"req_{seed}_{i}", "method": "POST",
               "path": "/v1/chat/completions", "input_tokens": rng.randrange(1, 4000),
               "output_tokens": rng.randrange(1, 500), "total_time_ms": rng.uniform(10, 5000),
               "queue_time_ms": 1.0, "inference_time_ms": 9.0, "gpu_memory_mb": 18432, "status": status}
        kind = rng.choice(("json", "json", "docker", "cri", "plain", "unknown", "broken"))
        if kind == "json":
            lines.append(json.dumps(req))
        elif kind == "docker":
            lines.append(json.dumps({"log": json.dumps(req) + "\n", "stream": "stdout",
                                     "time": "2025-04-05T10:23:45.123456789Z"}))
        elif kind == "cri":
            lines.append("2025-04-05T10:23:45.123456789Z stdout F " + json.dumps(req))
        elif kind == "plain":
            lines.append(f"INFO 04-05 10:23:47 engine.py:{i}] Avg prompt throughput: nothing to see")
            outcomes["accepted"] += 1
            continue
        elif kind == "unknown":
            lines.append(json.dumps({"hello": i}))
            outcomes["unrecognised"] += 1
            continue
        else:
            lines.append('{"request_id": "cut off')
            outcomes["invalid"] += 1
            continue
        outcomes["accepted"] += 1
        statuses[status] += 1
    return ("\n".join(lines) + "\n").encode(), dict(outcomes), statuses


def serve(*extra: str, stdin=subprocess.PIPE, source: str = "--stdin") -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(QWEN + ["serve", source, "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                                    "--no-gpu", *extra],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, port


def finish(proc: subprocess.Popen) -> str:
    try:
        proc.wait(timeout=SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.stderr.read().decode()


def test_piped_file_exact_counts_then_linger_until_sigterm() -> None:
    data, outcomes, statuses = seeded_lines(seed=14, n=3000)
    proc, port = serve("--linger")
    try:
        # Written in pieces that cut lines in two, as a pipe delivers them.
        for start in range(0, len(data), 7000):
            proc.stdin.write(data[start:start + 7000])
        proc.stdin.close()
        samples = wait_metrics(port, lambda s: records(s) == outcomes)
        assert requests_by_status(samples) == statuses
        time.sleep(0.5)
        assert proc.poll() is None  # --linger: still serving after EOF
        assert records(scrape(port)) == outcomes  # the final numbers, unchanged
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc)
    assert proc.returncode == 0, err
    assert "listening for Forward" not in err  # --stdin alone opens no Forward port
    assert "standard input ended: 3000 lines" in err


def test_eof_ends_the_process_and_counts_arrive_while_it_reads() -> None:
    data, _, _ = seeded_lines(seed=7, n=400)
    first, rest = data[: len(data) // 2], data[len(data) // 2:]
    first_lines = first.count(b"\n")
    proc, port = serve()
    try:
        proc.stdin.write(first)
        proc.stdin.flush()
        # While the pipe is open, /metrics shows the records of the whole lines written so far.
        samples = wait_metrics(port, lambda s: sum(records(s).values()) == first_lines)
        assert sum(records(samples).values()) == first_lines
        proc.stdin.write(rest)
        proc.stdin.close()
    except BaseException:
        proc.kill()
        raise
    err = finish(proc)  # no --linger: the end of the input ends the process
    assert proc.returncode == 0, err
    assert "standard input ended: 400 lines" in err


def test_sigterm_while_the_pipe_is_open() -> None:
    proc, port = serve()
    try:
        proc.stdin.write(b'{"request_id": "r1", "total_time_ms": 10, "status": "success"}\n')
        proc.stdin.flush()
        wait_metrics(port, lambda s: records(s).get("accepted") == 1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 5
    assert "stopped" in err


@pytest.mark.parametrize("source", ["--stdin", "-"])
def test_a_regular_file_as_stdin(tmp_path: Path, source: str) -> None:
    """``serve --stdin < file`` (or ``serve - < file``): a regular file, which the event loop cannot poll,
    read to its end."""
    data, outcomes, statuses = seeded_lines(seed=3, n=500)
    path = tmp_path / "requests.log"
    path.write_bytes(data)
    with open(path, "rb") as f:
        proc, port = serve("--linger", stdin=f, source=source)
    try:
        samples = wait_metrics(port, lambda s: records(s) == outcomes)
        assert requests_by_status(samples) == statuses
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc)
    assert proc.returncode == 0, err


def test_stdin_with_a_forward_port_given_serves_both() -> None:
    """``--stdin --port N``: the Forward port opens too, and both feed the same counts."""
    import socket

    import msgpack

    fport = free_port()
    proc, port = serve("--host", "127.0.0.1", "--port", str(fport))
    try:
        proc.stdin.write(b'{"request_id": "r1", "total_time_ms": 10, "status": "success"}\n')
        proc.stdin.flush()
        wait_metrics(port, lambda s: records(s).get("accepted") == 1)
        record = {"request_id": "r2", "total_time_ms": 10, "status": "error"}
        with socket.create_connection(("127.0.0.1", fport), timeout=10) as s:
            s.sendall(msgpack.packb(["llm", [[1_700_000_000, record]], {"chunk": "c1"}]))
            assert msgpack.unpackb(s.recv(100)) == {"ack": "c1"}
        samples = wait_metrics(port, lambda s: records(s).get("accepted") == 2)
        assert requests_by_status(samples) == {"success": 1, "error": 1}
        proc.stdin.close()
        err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err


def test_stdin_cannot_run_with_workers() -> None:
    proc = subprocess.run(QWEN + ["serve", "--stdin", "--workers", "2", "--no-gpu"], capture_output=True, text=True,
                          input="", timeout=SECONDS)
    assert proc.returncode == 2
    assert "--stdin reads one stream in one process" in proc.stderr


@pytest.mark.parametrize("linger", [False, True])
def test_empty_input(linger: bool) -> None:
    proc, port = serve(*(["--linger"] if linger else []))
    proc.stdin.close()
    if linger:
        samples = wait_metrics(port, lambda s: bool(s))
        assert records(samples) == {}
        proc.send_signal(signal.SIGTERM)
    err = finish(proc)
    assert proc.returncode == 0, err


def test_sigterm_as_soon_as_metrics_answer_stops_gracefully() -> None:
    """SIGTERM the moment the process says it serves /metrics (Kubernetes may send it then): the signal
    handler is already in place, so the receiver stops the graceful way and exits 0, never by the signal's
    default action (-15: the handler was once installed only after start-up; CI caught the race)."""
    proc, _ = serve("--linger")
    try:
        for line in proc.stderr:
            if b"serving /metrics" in line:
                break
        proc.send_signal(signal.SIGTERM)
        err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err
