"""``qwen-fluent serve --workers 2`` as a user runs it: two processes on one port, one exact /metrics.

The real command in a subprocess; many connections (the kernel spreads them
over the workers by SO_REUSEPORT), each message acked; then /metrics, merged
from both workers, must count every record exactly once, and SIGTERM must stop
everything with exit code 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from tests.support.forward import ForwardClient
from tests.support.net import free_port
from tests.support.truth import parse_text

TIMEOUT = 60.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except urllib.error.URLError:  # not listening yet
        return 0, b""


def test_two_workers_share_the_port_and_one_metrics_endpoint_counts_everything_once() -> None:
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_fluent", "serve", "--workers", "2", "--host", "127.0.0.1", "--port", "0",
         "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port), "--no-gpu"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "QWEN_FLUENT_LOG_LEVEL": "info"})
    try:
        port = None
        deadline = time.monotonic() + TIMEOUT
        log = []
        while port is None:
            assert time.monotonic() < deadline, "".join(log)
            line = proc.stderr.readline()
            assert line, "serve exited: " + "".join(log)
            log.append(line)
            found = re.search(r"2 workers listening for Forward on port (\d+)", line)
            if found:
                port = int(found.group(1))
        # Keep reading the log so that the workers never block on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        while get(f"http://127.0.0.1:{metrics_port}/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        sent = 0
        for c in range(16):
            with ForwardClient("127.0.0.1", port) as client:
                for m in range(3):
                    entries = [(1.7e9 + i, {"request_id": f"r{c}-{m}-{i}", "input_tokens": 10 + i,
                                            "total_time_ms": 100 * i, "status": "success" if i % 4 else "error",
                                            "kubernetes": {"namespace_name": "ml", "pod_name": f"vllm-{c % 3}",
                                                           "container_name": "vllm"}})
                               for i in range(50)]
                    client.send("kube.x", entries, chunk=f"c{c}-{m}", packed=bool(m % 2))
                    sent += len(entries)

        status, body = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        samples = parse_text(body)
        requests = sum(v for k, v in samples.items() if k[0] == "qwen_requests_total")
        errors = sum(v for k, v in samples.items() if k[0] == "qwen_requests_total" and ("status", "error") in k[1])
        assert requests == sent == 16 * 3 * 50
        assert errors == 16 * 3 * 13  # i % 4 == 0 for 13 of 50
        assert samples[("qwen_fluent_records_total", frozenset({("outcome", "accepted")}))] == sent
        assert samples[("qwen_fluent_connections_total", frozenset({("transport", "tcp")}))] == 16
        assert samples[("qwen_fluent_acks_total", frozenset())] == 48
        tokens = sum(v for k, v in samples.items() if k[0] == "qwen_input_tokens_total")
        assert tokens == 16 * 3 * sum(10 + i for i in range(50))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0
