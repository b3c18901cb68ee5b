"""MetricsHTTPServer over real loopback HTTP: negotiation, gzip, probes, errors, limits."""

from __future__ import annotations

import gzip
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from qwen_fluent.metrics import LLMMetrics, MetricsConfig, ReceiverCollector
from qwen_fluent.records import RequestEvent, Source
from qwen_fluent.server import http as http_module
from qwen_fluent.server.http import MetricsHTTPServer
from qwen_fluent.stats import ReceiverStats
from tests.support.truth import parse_text

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # what Prometheus 2.42 sends


class Ready:
    def __init__(self) -> None:
        self.value = True

    def __call__(self) -> bool:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.fixture
def ready() -> Ready:
    return Ready()


@pytest.fixture
def server(ready: Ready) -> Iterator[MetricsHTTPServer]:
    registry = CollectorRegistry()
    metrics = LLMMetrics(MetricsConfig())
    metrics.observe(RequestEvent("success", "/v1/chat/completions", "qwen", "req-42", "POST", 10, 5, 1.2, 0.1, 1.1,
                                 None, None, None, 200, "", 1.7e9, Source("ml", "pod-a", "vllm")))
    registry.register(metrics)
    registry.register(ReceiverCollector(ReceiverStats()))
    with MetricsHTTPServer("127.0.0.1", 0, registry, ready=ready) as srv:
        yield srv


def get(server: MetricsHTTPServer, path: str, method: str = "GET", **headers: str):
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_binds_a_free_port_when_asked_for_zero(server: MetricsHTTPServer) -> None:
    assert server.port > 0


def test_metrics_default_to_the_prometheus_text_format(server: MetricsHTTPServer) -> None:
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse_text(body)
    assert any(k[0] == "qwen_requests_total" for k in samples)
    assert any(k[0] == "qwen_fluent_records_total" for k in samples)
    assert b"request_id" not in body


def test_openmetrics_when_asked_with_exemplars(server: MetricsHTTPServer) -> None:
    status, headers, body = get(server, "/metrics", Accept=PROMETHEUS_ACCEPT)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body.decode())}
    exemplars = [s.exemplar for s in families["qwen_request_duration_seconds"].samples if s.exemplar]
    assert [e.labels for e in exemplars] == [{"request_id": "req-42"}]


def test_gzip_when_accepted_and_same_content(server: MetricsHTTPServer) -> None:
    _, _, plain = get(server, "/metrics")
    status, headers, body = get(server, "/metrics", **{"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert parse_text(gzip.decompress(body)) == parse_text(plain)
    _, headers, _ = get(server, "/metrics", **{"Accept-Encoding": "identity"})
    assert headers["Content-Encoding"] is None


def test_head_has_headers_and_no_body(server: MetricsHTTPServer) -> None:
    status, headers, body = get(server, "/metrics", method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) > 0 and body == b""


def test_probes(server: MetricsHTTPServer, ready: Ready) -> None:
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/readyz")[0] == 200
    ready.value = False
    assert get(server, "/readyz")[0] == 503
    assert get(server, "/healthz")[0] == 200
    ready.value = RuntimeError("check broke")
    assert get(server, "/readyz")[0] == 503


def test_unknown_paths_and_methods(server: MetricsHTTPServer) -> None:
    assert get(server, "/nope")[0] == 404
    status, headers, _ = get(server, "/metrics", method="POST")
    assert status == 405 and "GET" in headers["Allow"]


def test_a_broken_collector_gives_500_and_the_endpoint_survives() -> None:
    class Broken:
        def collect(self):
            raise RuntimeError("collector bug")

    registry = CollectorRegistry()
    registry.register(Broken())
    with MetricsHTTPServer("127.0.0.1", 0, registry) as srv:
        assert get(srv, "/metrics")[0] == 500
        assert get(srv, "/healthz")[0] == 200


def status_or_refused(server: MetricsHTTPServer, path: str) -> int | str:
    """The status of GET ``path``, or the error's name when the server closed the connection unanswered.

    A connection past the limit is closed on accept, which urllib reports by
    raising (reset, or disconnected before a status line), not with a status.
    """
    try:
        return get(server, path)[0]
    except (urllib.error.URLError, ConnectionError) as error:
        return type(error).__name__


def test_connections_past_the_limit_are_closed_on_accept(server: MetricsHTTPServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(http_module.MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 10
        refused = socket.create_connection(("127.0.0.1", server.port))
        refused.settimeout(10)
        try:
            refused.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            answer = refused.recv(100)
        except ConnectionError:  # reset: closed with our request unread
            answer = b""
        assert answer == b""  # closed without an answer
        refused.close()
        assert server.refused >= 1 and time.monotonic() < deadline
    finally:
        for s in idle:
            s.close()
    # Slots come back when the idle connections go. The server's handler threads
    # see each close on their own time, so a request right after may still be
    # refused: retry until one is served. Bound: by REQUEST_TIMEOUT every idle
    # connection's handler has timed out even had it missed the close; twice
    # that leaves a loaded machine time to serve the next request.
    deadline = time.monotonic() + 2 * http_module.REQUEST_TIMEOUT
    while (answer := status_or_refused(server, "/healthz")) != 200:
        assert time.monotonic() < deadline, f"no slot came back; last answer: {answer}"
        time.sleep(0.05)


def test_stop_releases_the_port() -> None:
    srv = MetricsHTTPServer("127.0.0.1", 0, CollectorRegistry())
    srv.start()
    port = srv.port
    srv.stop()
    again = MetricsHTTPServer("127.0.0.1", port, CollectorRegistry())
    again.start()
    try:
        assert get(again, "/healthz")[0] == 200
    finally:
        again.stop()
