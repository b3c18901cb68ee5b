"""A real Prometheus for the dashboard test: started on loopback, queried over HTTP, stopped.

The dashboard test needs what a deployment has: the shipped recording rules
loaded and evaluated, the scrape job named ``qwen-fluent`` and a ``node``
target label, as the ServiceMonitor and prometheus.yml set them. So it writes
its own configuration with those, and runs Debian's ``prometheus`` binary with
a 1 s scrape and evaluation interval. A missing binary fails the test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

#: How long Prometheus may take to open its port and load the config. Debian's
#: build starts in well under a second here; 30 s covers a loaded CI machine.
START_TIMEOUT = 30.0


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """One Prometheus process; use as a context manager."""

    def __init__(self, binary: str, workdir: Path, scrape_configs: list[dict], rule_files: list[Path]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": scrape_configs,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self.log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited: {self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise PrometheusError(f"prometheus not ready after {START_TIMEOUT}s: {self.logs()}")

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def logs(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]

    def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{path} {params}: {exc.read().decode(errors='replace')}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector (or matrix)."""
        return self._get("/api/v1/query", [("query", expr)])["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's label_values(match, label) shows."""
        return self._get(f"/api/v1/label/{label}/values", [("match[]", match)])

    def wait_until(self, expr: str, timeout: float = 30.0) -> list[dict]:
        """Poll an instant query until it returns a sample."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)
