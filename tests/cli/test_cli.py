"""The qwen-fluent command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import msgpack

QWEN = [sys.executable, "-m", "qwen_fluent"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float = 15) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_help_lists_commands():
    out = subprocess.run(QWEN + ["--help"], capture_output=True, text=True, check=True).stdout
    for word in ("serve", "gpu", "check-config", "/metrics"):
        assert word in out
    serve = subprocess.run(QWEN + ["serve", "--help"], capture_output=True, text=True, check=True).stdout
    assert "QWEN_FLUENT_SHARED_KEY" in serve and "--stdout" in serve


def test_check_config(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[server]\nport = 24225\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\npotr = 1\n")
    ok = subprocess.run(QWEN + ["check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    fail = subprocess.run(QWEN + ["check-config", str(bad)], capture_output=True, text=True)
    assert fail.returncode == 2
    assert fail.stderr.strip().splitlines() == ["qwen-fluent: error: unknown key 'potr' in [server] "
                                                "(known: host, port, shutdown_grace, tls_cert, tls_client_ca, tls_key, unix_socket, workers)"]


def test_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            QWEN + ["serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-host", "127.0.0.1",
                    "--metrics-port", "0", "--no-gpu"],
            capture_output=True, text=True, timeout=30,
        )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qwen-fluent: error: address already in use")
    assert "Traceback" not in proc.stderr


def test_unreadable_certificate_is_one_line(tmp_path):
    proc = subprocess.run(
        QWEN + ["serve", "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"qwen-fluent: error: [server] tls_cert '{tmp_path / 'missing.pem'}' is not a readable file"


def test_serve_stdout_metrics_and_sigterm():
    """serve --stdout: records arrive as JSON lines, /metrics counts them, SIGTERM exits cleanly."""
    fport, mport = free_port(), free_port()
    proc = subprocess.Popen(
        QWEN + ["serve", "--stdout", "--host", "127.0.0.1", "--port", str(fport), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(mport), "--no-gpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert wait_http(f"http://127.0.0.1:{mport}/readyz")
        record = {"request_id": "r-1", "path": "/v1/chat/completions", "status": "success", "input_tokens": 10,
                  "output_tokens": 5, "total_time_ms": 250, "queue_time_ms": 10, "inference_time_ms": 240,
                  "gpu_memory_mb": 1024}
        with socket.create_connection(("127.0.0.1", fport), timeout=10) as s:
            s.sendall(msgpack.packb(["llm.test", [[1_700_000_000, record]], {"chunk": "c1"}], use_bin_type=True))
            assert msgpack.unpackb(s.recv(100)) == {"ack": "c1"}
        metrics = wait_http(f"http://127.0.0.1:{mport}/metrics").decode()
        assert 'qwen_requests_total{' in metrics and 'status="success"' in metrics
        line = proc.stdout.readline()
        assert json.loads(line) == {"tag": "llm.test", "time": 1_700_000_000, "record": record}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert "stopped" in proc.stderr.read()
