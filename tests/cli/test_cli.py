"""The qwen-fluent command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import msgpack

from tests.support.net import free_port, wait_http

QWEN = [sys.executable, "-m", "qwen_fluent"]


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
    assert fail.stderr.strip().splitlines() == [f"qwen-fluent: error: unknown key 'potr' in [server] in {bad}; "
                                                "did you mean 'port'? (known: allowed_networks, host, port, shutdown_grace, tls_cert, "
                                                "tls_client_ca, tls_key, unix_socket, workers)"]


def test_unreadable_certificate_is_one_line(tmp_path):
    proc = subprocess.run(
        QWEN + ["serve", "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"qwen-fluent: error: --tls-cert: '{tmp_path / 'missing.pem'}' is not a readable file"


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


def _unrecognised_lines(stderr: str) -> list[str]:
    return [line.split(" qwen_fluent.pipeline: ", 1)[1] for line in stderr.splitlines()
            if " INFO qwen_fluent.pipeline: unrecognised record" in line]


def test_serve_logs_a_sample_of_unrecognised_records_keys_never_values():
    """serve at info: the first records of each reason are logged with tag and keys, on the record-by-record
    path (Forward mode) and on the typed path's refused records (PackedForward); values never appear."""
    from qwen_fluent.pipeline import UnrecognisedLog

    fport, mport = free_port(), free_port()
    proc = subprocess.Popen(
        QWEN + ["serve", "--host", "127.0.0.1", "--port", str(fport), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(mport), "--no-gpu", "--log-level", "info"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    secret = "s3cr3t-prompt-text"
    request = {"request_id": "r-1", "status": "success", "total_time_ms": 250, "output_tokens": 5}
    try:
        assert wait_http(f"http://127.0.0.1:{mport}/readyz")
        with socket.create_connection(("127.0.0.1", fport), timeout=10) as s:
            entries = [[1_700_000_000, {"prompt": secret, "user": secret}] for _ in range(UnrecognisedLog.FIRST + 3)]
            s.sendall(msgpack.packb(["app.one", entries, {"chunk": "c1"}], use_bin_type=True))
            assert msgpack.unpackb(s.recv(100)) == {"ack": "c1"}
            packed = b"".join(msgpack.packb([1_700_000_000, r], use_bin_type=True)
                              for r in (request, {"log": '{"cut": "' + secret}, request))
            s.sendall(msgpack.packb(["app.two", packed, {"chunk": "c2"}], use_bin_type=True))
            assert msgpack.unpackb(s.recv(100)) == {"ack": "c2"}
        metrics = wait_http(f"http://127.0.0.1:{mport}/metrics").decode()
        assert f'qwen_fluent_unrecognised_records_total{{reason="unknown_shape"}} {UnrecognisedLog.FIRST + 3}' \
            in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    stderr = proc.stderr.read()
    assert secret not in stderr
    first = "unrecognised record (unknown_shape) tag='app.one' keys=['prompt', 'user']"
    assert _unrecognised_lines(stderr) == [first] * (UnrecognisedLog.FIRST - 1) + [
        first + "; from now on at most one line every 60 s for this reason",
        "unrecognised record (invalid_json) tag='app.two' keys=['log']",
    ]


def test_unrecognised_log_samples_per_reason_and_bounds_what_it_prints(caplog):
    """After the first FIRST per reason, one line per INTERVAL, counting the ones left out; keys and tag cut."""
    from qwen_fluent.pipeline import UnrecognisedLog

    now = [1000.0]
    sample = UnrecognisedLog(clock=lambda: now[0])
    caplog.set_level("INFO", logger="qwen_fluent.pipeline")
    for _ in range(UnrecognisedLog.FIRST + 10):
        sample("unknown_shape", "t", {"a": 1})
    sample("empty_record", b"bytes.tag", {})
    now[0] += UnrecognisedLog.INTERVAL - 1
    sample("unknown_shape", "t", {"a": 1})  # still within the interval
    now[0] += 1
    sample("unknown_shape", "t", {"a": 1})
    wide = {f"key{i}": i for i in range(UnrecognisedLog.MAX_KEYS + 3)} | {"k" * 100: 0}
    sample("invalid_request", "x" * 1000, wide)
    sample("not_a_map", "t", [1, 2])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:UnrecognisedLog.FIRST] == ["unrecognised record (unknown_shape) tag='t' keys=['a']"] * (
        UnrecognisedLog.FIRST - 1) + ["unrecognised record (unknown_shape) tag='t' keys=['a']; from now on at most "
                                      "one line every 60 s for this reason"]
    assert lines[UnrecognisedLog.FIRST:UnrecognisedLog.FIRST + 2] == [
        "unrecognised record (empty_record) tag='bytes.tag' keys=[]",
        "unrecognised record (unknown_shape) tag='t' keys=['a'] (11 more since the last line)",
    ]
    cut = lines[-2]
    assert f"tag='{'x' * UnrecognisedLog.MAX_TAG_CHARS}'" in cut
    assert cut.endswith(f"'key{UnrecognisedLog.MAX_KEYS - 1}', ... 4 more]")
    assert lines[-1] == "unrecognised record (not_a_map) tag='t' type=list"
    assert len(lines) == UnrecognisedLog.FIRST + 4


def test_unrecognised_log_tracks_a_bounded_number_of_reasons(caplog):
    from qwen_fluent.pipeline import UnrecognisedLog

    sample = UnrecognisedLog(clock=lambda: 0.0)
    caplog.set_level("INFO", logger="qwen_fluent.pipeline")
    for i in range(UnrecognisedLog.MAX_REASONS + 50):
        for _ in range(UnrecognisedLog.FIRST + 1):
            sample(f"reason{i}", "t", {})
    assert sample.sampler.kinds == UnrecognisedLog.MAX_REASONS + 1  # the cap, plus the one shared slot
    assert sum("(other)" in r.getMessage() for r in caplog.records) == UnrecognisedLog.FIRST
