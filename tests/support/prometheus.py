"""A real Prometheus server for tests: start, wait for targets, query, stop.

:class:`PrometheusServer` runs Debian's ``prometheus`` binary (2.42 here) on a
free loopback port with a generated configuration (1 s scrape and evaluation
interval, the given targets under one job, optionally with the shipped
recording and alert rules and extra target labels, as a deployment has them),
in a temporary directory it owns.
It talks to it only through the HTTP API. A missing binary is a test
failure, never a skip: :func:`require_binary` says how to install it.

    with PrometheusServer(["127.0.0.1:8000"]) as prom:
        prom.wait_until_up()
        prom.query('sum(rate(qwen_requests_total[1m]))')
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .net import free_port

#: Seconds Prometheus may take to open its port and load its configuration.
#: It starts in well under a second here; 30 s covers a loaded CI machine.
START_TIMEOUT = 30.0
#: Seconds to wait for a target to be scraped successfully: a few scrape
#: intervals, plus the start-up of the first scrape loop.
UP_TIMEOUT = 30.0
#: Seconds an HTTP API call may take.
API_TIMEOUT = 10.0


class PrometheusError(RuntimeError):
    """Prometheus did not start, a target never came up, or a query failed."""


def require_binary(name: str = "prometheus") -> str:
    """The path of ``prometheus`` or ``promtool``; fails (never skips) the calling test when missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed; this test needs a real one: apt-get install -y prometheus "
            "(Debian's package, ./scripts/test installs it; stop its service afterwards, tests start "
            "their own)",
            pytrace=False,
        )
    return path


class PrometheusServer:
    """One Prometheus process scraping ``targets`` every second; a context manager.

    ``features`` are ``--enable-feature`` values (``exemplar-storage`` lets
    :meth:`query_exemplars` see OpenMetrics exemplars). ``job`` names the
    scrape job; ``labels`` are added to every target of it (a deployment's
    ``node``, say, as the ServiceMonitor relabels it); ``rule_files`` are
    loaded and evaluated every second; ``extra_scrape_configs`` are appended
    as they are.
    """

    def __init__(
        self,
        targets: list[str],
        *,
        job: str = "qwen-fluent",
        labels: dict[str, str] | None = None,
        features: tuple[str, ...] = ("exemplar-storage",),
        rule_files: tuple[Path, ...] = (),
        extra_scrape_configs: tuple[dict[str, Any], ...] = (),
        binary: str | None = None,
    ) -> None:
        self.binary = binary or require_binary("prometheus")
        self.targets = list(targets)
        self.job = job
        self.features = features
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        static = {"targets": self.targets, "labels": dict(labels or {})}
        self.config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [static]}, *extra_scrape_configs],
        }
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # -- life cycle -------------------------------------------------------------

    def start(self) -> PrometheusServer:
        self._dir = tempfile.TemporaryDirectory(prefix="qwen-fluent-prometheus-")
        workdir = Path(self._dir.name)
        config_file = workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the configuration.
        config_file.write_text(json.dumps(self.config, indent=1), encoding="utf-8")
        self._log_path = workdir / "prometheus.log"
        argv = [
            self.binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        argv += [f"--enable-feature={f}" for f in self.features]
        with self._log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise PrometheusError(f"prometheus exited at start:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        logs = self.logs()
        self.stop()
        raise PrometheusError(f"prometheus not ready after {START_TIMEOUT} s:\n{logs}")

    def stop(self) -> None:
        """Terminate the process (kill after 10 s) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        """The tail of Prometheus' own log, for assertion messages."""
        try:
            return self._log_path.read_text(errors="replace")[-4000:]
        except (AttributeError, OSError):
            return "(no log)"

    # -- the HTTP API -------------------------------------------------------------

    def api(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params or [])}"
        try:
            with urllib.request.urlopen(url, timeout=API_TIMEOUT) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{path} {params}: {exc.read().decode(errors='replace')}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (a list of ``{"metric": ..., "value": [t, "v"]}``)."""
        params = [("query", expr)]
        if at is not None:
            params.append(("time", repr(at)))
        return self.api("query", params)["result"]

    def query_exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """Exemplars of the series ``expr`` selects (needs the exemplar-storage feature)."""
        return self.api("query_exemplars", [("query", expr), ("start", repr(start)), ("end", repr(end))])

    def label_values(self, label: str, match: str) -> list[str]:
        """The values of ``label`` on the series ``match`` selects (Grafana's ``label_values(match, label)``)."""
        return self.api(f"label/{label}/values", [("match[]", match)])

    def targets_status(self) -> list[dict[str, Any]]:
        """The active targets with their health and last error."""
        return self.api("targets")["activeTargets"]

    def wait_until_up(self, timeout: float = UP_TIMEOUT) -> None:
        """Wait until every target of the job has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            targets = [t for t in self.targets_status() if t["labels"].get("job") == self.job]
            if targets and all(t["health"] == "up" for t in targets):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"targets not up after {timeout} s: {targets}\n{self.logs()}")
            time.sleep(0.2)

    def wait_for(self, expr: str, predicate: Any = bool, timeout: float = UP_TIMEOUT) -> list[dict[str, Any]]:
        """Poll an instant query until ``predicate(result)`` holds; the last result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{expr!r} never satisfied the condition; last result {result}")
            time.sleep(0.2)

    def wait_for_scrape_after(self, moment: float, timeout: float = UP_TIMEOUT) -> None:
        """Wait until every target's last successful scrape started after ``moment`` (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            targets = [t for t in self.targets_status() if t["labels"].get("job") == self.job]
            if targets and all(t["health"] == "up" and _rfc3339(t["lastScrape"]) > moment for t in targets):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"no successful scrape after {moment}: {targets}")
            time.sleep(0.2)


def _rfc3339(text: str) -> float:
    """Epoch seconds of an RFC 3339 time as Prometheus writes it (nanoseconds; Python 3.10 reads 6 digits)."""
    import re
    from datetime import datetime, timedelta, timezone

    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|([+-])(\d\d):(\d\d))", text)
    if m is None:
        raise PrometheusError(f"not an RFC 3339 time: {text!r}")
    offset = timedelta(0)
    if m.group(4):
        offset = timedelta(hours=int(m.group(5)), minutes=int(m.group(6))) * (1 if m.group(4) == "+" else -1)
    moment = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone(offset))
    return moment.timestamp() + float(m.group(2) or 0)
