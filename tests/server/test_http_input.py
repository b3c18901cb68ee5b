"""The HTTP input against real HTTP clients (httpx, and raw sockets for what clients will not send).

Each test runs the real :class:`~qwen_fluent.server.http_input.HTTPInputServer`
on loopback, in an event loop in its own thread, feeding the real metrics sink
(normaliser, metrics, ReceiverStats) exactly as the receiver wires it, with a
Forward server on the same loop and sink: the same records sent both ways
must give the same samples. Request shapes are Fluent Bit's ``http`` output's
(``plugins/out_http/http.c``: ``Content-Type`` per format, ``User-Agent:
Fluent-Bit``, ``Content-Encoding: gzip``, the ``date`` key first in each
JSON object, the raw chunk for ``msgpack``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from qwen_fluent.forward import Limits
from qwen_fluent.metrics import LLMMetrics, MetricsConfig, ReceiverCollector
from qwen_fluent.metrics.exposition import Registry, negotiate, render
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser, NormaliserConfig
from qwen_fluent.server import ForwardServer, ServerConfig
from qwen_fluent.server.http_input import (
    HTTPInputConfig,
    HTTPInputServer,
    HTTPLimits,
    parse_date,
    tag_from_path,
)
from qwen_fluent.stats import ReceiverStats

from ..support.forward import ForwardClient, event_time
from ..support.truth import parse_text, request_samples

FB_HEADERS = {"User-Agent": "Fluent-Bit"}


def request(i: int, status: str = "success", path: str = "/v1/chat/completions") -> dict[str, Any]:
    """The article's request log line for request ``i``."""
    return {"timestamp": f"2025-04-05T10:23:{i % 60:02d}Z", "request_id": f"req_{i:08d}", "method": "POST",
            "path": path, "input_tokens": 100 + i, "output_tokens": 10 + i, "total_time_ms": 100.0 + i,
            "queue_time_ms": 5.0, "inference_time_ms": 95.0 + i, "gpu_memory_mb": 18432, "status": status}


class Inputs:
    """The HTTP input and a Forward server on one loop, one metrics sink, one ReceiverStats."""

    def __init__(self, defer: bool = True, **config: Any) -> None:
        """``defer``: msgpack bodies decoded by the metrics sink (the receiver without ``--stdout``)."""
        self.defer = defer
        self.config = HTTPInputConfig(host="127.0.0.1", port=0, **config)
        self.stats = ReceiverStats()
        self.metrics = LLMMetrics(MetricsConfig())
        self.registry = Registry()
        self.registry.register(self.metrics)
        self.registry.register(ReceiverCollector(self.stats))
        self.sink = MetricsSink(Normaliser(NormaliserConfig()), self.metrics, self.stats, Limits())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Inputs:
        self._thread.start()
        self.http = HTTPInputServer(self.config, self.sink, self.stats, defer_packed=self.defer)
        self.forward = ForwardServer(ServerConfig(host="127.0.0.1", port=0), self.sink, self.stats,
                                     defer_packed=True)
        self.run(self.http.start())
        self.run(self.forward.start())
        scheme = "https" if self.config.tls_cert else "http"
        self.url = f"{scheme}://{'localhost' if self.config.tls_cert else '127.0.0.1'}:{self.http.port}"
        return self

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.http.stop(grace=5.0))

    def __exit__(self, *exc: object) -> None:
        if not self.http.stopping:
            self.stop()
        self.run(self.forward.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def samples(self) -> dict:
        text = b"".join(self.run(_render(self.registry)))
        return parse_text(text)

    def records(self) -> dict[str, int]:
        return dict(self.stats.records)


async def _render(registry: Registry) -> list[bytes]:
    return render(registry, negotiate("text/plain"))


def fb_json(records: list[dict], fmt: str, t0: float = 1743848625.25) -> bytes:
    """What Fluent Bit's ``http`` output sends for ``format json`` or ``json_lines`` (``json_date_key date``)."""
    objects = [{"date": t0 + i, **r} for i, r in enumerate(records)]
    if fmt == "json":
        return json.dumps(objects).encode()
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def fb_msgpack(records: list[dict], t0: int = 1743848625) -> bytes:
    """A Fluent Bit chunk as ``format msgpack`` sends it: ``[[EventTime, {}], record]`` entries back to back."""
    return b"".join(msgpack.packb([[event_time(t0 + i), {}], r]) for i, r in enumerate(records))


CONTENT_TYPES = {"json": "application/json", "json_lines": "application/x-ndjson", "msgpack": "application/msgpack"}


@pytest.mark.parametrize("fmt", ["json", "json_lines", "msgpack"])
@pytest.mark.parametrize("compress", [False, True])
def test_fluent_bit_request_shapes_give_the_forward_samples(fmt: str, compress: bool) -> None:
    """Every out_http format, gzip and not: exact counts, and the samples Forward gives for the same records."""
    records = [request(i, status=("success", "error", "timeout")[i % 3]) for i in range(60)]
    body = fb_msgpack(records) if fmt == "msgpack" else fb_json(records, fmt)
    headers = {**FB_HEADERS, "Content-Type": CONTENT_TYPES[fmt]}
    if compress:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    with Inputs() as http_side:
        reply = httpx.post(http_side.url + "/llm.inference", content=body, headers=headers)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"records": 60, "accepted": 60, "unrecognised": 0, "invalid": 0}
        assert http_side.records() == {"accepted": 60}
        assert http_side.stats.messages["http"] == 1
        via_http = request_samples(http_side.samples())
    with Inputs() as forward_side:
        with ForwardClient("127.0.0.1", forward_side.forward.port) as client:
            client.send("llm.inference", [(1743848625.0 + i, r) for i, r in enumerate(records)],
                                chunk="c1")
        assert forward_side.records() == {"accepted": 60}
        via_forward = request_samples(forward_side.samples())
    assert via_http and via_http == via_forward


def test_zstd_bodies() -> None:
    """Fluent Bit's ``compress zstd``: the Forward port's bounded zstd reader, the same 413 for a bomb."""
    import zstandard

    with Inputs(limits=HTTPLimits(max_decompressed_bytes=256 * 1024)) as inputs:
        body = zstandard.ZstdCompressor().compress(fb_json([request(i) for i in range(10)], "json_lines"))
        headers = {**FB_HEADERS, "Content-Type": "application/x-ndjson", "Content-Encoding": "zstd"}
        assert httpx.post(inputs.url, content=body, headers=headers).status_code == 200
        small_window = zstandard.ZstdCompressionParameters.from_level(3, window_log=16)  # a window under the limit
        bomb = zstandard.ZstdCompressor(compression_params=small_window).compress(b" " * (4 * 1024 * 1024))
        assert httpx.post(inputs.url, content=bomb, headers=headers).status_code == 413
        assert inputs.records() == {"accepted": 10}


def test_the_article_posts_one_json_line_at_a_time() -> None:
    """The article's exporter takes one JSON object per POST: urllib, no Fluent Bit in sight."""
    import urllib.request

    with Inputs() as inputs:
        for i in range(5):
            req = urllib.request.Request(inputs.url + "/", data=json.dumps(request(i)).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=10) as reply:
                assert reply.status == 200
                assert json.loads(reply.read()) == {"records": 1, "accepted": 1, "unrecognised": 0, "invalid": 0}
        assert inputs.records() == {"accepted": 5}
        total = sum(v for (name, _), v in inputs.samples().items() if name == "qwen_requests_total")
        assert total == 5


def test_curl_with_expect_100_continue(tmp_path: Path) -> None:
    """curl asks ``Expect: 100-continue`` before a large body: it gets it, then a 200; refused, it gets the 401 at once."""
    import shutil
    import subprocess

    curl = shutil.which("curl")
    assert curl, "curl is a test peer (apt-get install curl)"
    records = [request(i) for i in range(3000)]
    body = tmp_path / "body.ndjson"
    body.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    with Inputs(secret="s3cret") as inputs:
        def post(*extra: str) -> tuple[str, str]:
            out = subprocess.run([curl, "-sS", "-v", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20",
                                  "-H", "Content-Type: application/x-ndjson", "-H", "Expect: 100-continue",  # as curl does itself past 1 MiB
                                  "--data-binary", f"@{body}", inputs.url + "/llm", *extra],
                                 capture_output=True, text=True, timeout=30)
            return out.stdout.rsplit("\n", 1)[1], out.stderr
        code, trace = post("-H", "Authorization: Bearer s3cret")
        assert code == "200" and "HTTP/1.1 100 Continue" in trace
        assert inputs.records() == {"accepted": 3000}
        started = time.monotonic()
        code, trace = post()
        assert code == "401" and "100 Continue" not in trace
        assert time.monotonic() - started < 5  # answered without waiting for curl's 1 s expect timeout
        assert inputs.records() == {"accepted": 3000}


def test_keep_alive_connection_carries_many_requests() -> None:
    with Inputs() as inputs, httpx.Client(base_url=inputs.url) as client:
        for i in range(20):
            reply = client.post("/", json=request(i))
            assert reply.status_code == 200
        assert inputs.stats.connections_opened["http"] == 1
        assert inputs.records() == {"accepted": 20}


def test_bad_json_is_400_and_nothing_is_taken() -> None:
    with Inputs() as inputs:
        good_then_bad = json.dumps(request(1)) + "\n{not json"
        reply = httpx.post(inputs.url, content=good_then_bad, headers={"Content-Type": "application/json"})
        assert reply.status_code == 400
        assert "not JSON" in reply.json()["error"]
        assert inputs.records() == {}
        assert inputs.stats.errors["http_bad_payload"] == 1
        # a body that is not UTF-8, a bare number, an empty body
        for body in (b"\xff\xfe{}", b"", b"   "):
            assert httpx.post(inputs.url, content=body, headers={"Content-Type": "application/json"}).status_code == 400
        assert inputs.records() == {}


def test_json_lines_take_the_good_lines_and_count_the_bad() -> None:
    with Inputs() as inputs:
        body = "\n".join([json.dumps(request(1)), "{broken", "[1, 2]", json.dumps(request(2)), "", "42"]) + "\n"
        reply = httpx.post(inputs.url, content=body, headers={"Content-Type": "application/x-ndjson"})
        assert reply.status_code == 200
        assert reply.json() == {"records": 5, "accepted": 2, "unrecognised": 0, "invalid": 3}
        assert inputs.records() == {"accepted": 2, "invalid": 3}
        only_bad = httpx.post(inputs.url, content=b"{x\n{y\n", headers={"Content-Type": "application/x-ndjson"})
        assert only_bad.status_code == 400
        assert inputs.records() == {"accepted": 2, "invalid": 3}


def test_unrecognised_records_are_counted_as_over_forward() -> None:
    with Inputs() as inputs:
        reply = httpx.post(inputs.url, json=[request(1), {"hello": "world"}, "a string"])
        assert reply.status_code == 200
        assert reply.json() == {"records": 3, "accepted": 1, "unrecognised": 1, "invalid": 1}
        assert inputs.records() == {"accepted": 1, "unrecognised": 1, "invalid": 1}


def test_bad_msgpack_and_bad_gzip_are_400() -> None:
    with Inputs() as inputs:
        cut = fb_msgpack([request(1), request(2)])[:-5]
        assert httpx.post(inputs.url, content=cut, headers={"Content-Type": "application/msgpack"}).status_code == 400
        assert httpx.post(inputs.url, content=b"\x1f\x8bnot gzip",
                          headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}).status_code == 400
        assert inputs.records() == {}
        assert inputs.stats.errors["http_bad_payload"] == 2


def test_msgpack_bare_maps() -> None:
    with Inputs() as inputs:
        body = msgpack.packb(request(1)) + msgpack.packb(request(2))
        reply = httpx.post(inputs.url, content=body, headers={"Content-Type": "application/msgpack"})
        assert reply.status_code == 200 and reply.json()["accepted"] == 2


def test_unsupported_type_encoding_and_method() -> None:
    with Inputs() as inputs:
        assert httpx.post(inputs.url, content=b"x", headers={"Content-Type": "application/xml"}).status_code == 415
        assert httpx.post(inputs.url, content=b"x", headers={"Content-Type": "application/json",
                                                              "Content-Encoding": "snappy"}).status_code == 415
        assert httpx.get(inputs.url).status_code == 405
        assert inputs.stats.errors["http_unsupported"] == 3
        assert inputs.records() == {}


def test_oversized_bodies_are_413() -> None:
    limits = HTTPLimits(max_body_bytes=64 * 1024, max_decompressed_bytes=128 * 1024)
    with Inputs(limits=limits) as inputs:
        big = json.dumps([request(i) for i in range(400)]).encode()
        assert len(big) > 64 * 1024
        reply = httpx.post(inputs.url, content=big, headers={"Content-Type": "application/json"})
        assert reply.status_code == 413
        # chunked (no Content-Length): refused once the body passes the limit
        reply = httpx.post(inputs.url, content=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                           headers={"Content-Type": "application/json"})
        assert reply.status_code == 413
        # small on the wire, too large once gunzipped (a gzip bomb)
        bomb = gzip.compress(b" " * (1024 * 1024))
        reply = httpx.post(inputs.url, content=bomb, headers={"Content-Type": "application/json",
                                                              "Content-Encoding": "gzip"})
        assert reply.status_code == 413
        assert inputs.stats.errors["http_too_large"] == 3
        assert inputs.records() == {}
        # the input still takes a body within the limits
        assert httpx.post(inputs.url, json=request(1)).status_code == 200


def test_headers_past_the_limit_are_refused() -> None:
    with Inputs(limits=HTTPLimits(max_header_bytes=4096)) as inputs:
        reply = httpx.post(inputs.url, json=request(1), headers={"X-Big": "a" * 8000})
        assert reply.status_code == 431
        assert inputs.records() == {}


def test_bearer_and_basic_auth() -> None:
    with Inputs(secret="s3cret") as inputs:
        body = json.dumps(request(1))
        plain = {"Content-Type": "application/json"}
        none = httpx.post(inputs.url, content=body, headers=plain)
        assert none.status_code == 401 and "Bearer" in none.headers["www-authenticate"]
        assert httpx.post(inputs.url, content=body,
                          headers={**plain, "Authorization": "Bearer wrong"}).status_code == 403
        assert httpx.post(inputs.url, content=body, headers=plain, auth=("fluent", "wrong")).status_code == 403
        assert inputs.records() == {}
        assert httpx.post(inputs.url, content=body,
                          headers={**plain, "Authorization": "Bearer s3cret"}).status_code == 200
        # Fluent Bit's http_user / http_passwd
        assert httpx.post(inputs.url, content=body, headers=plain, auth=("fluent", "s3cret")).status_code == 200
        assert inputs.records() == {"accepted": 2}
        assert inputs.stats.errors["http_unauthorized"] == 1
        assert inputs.stats.errors["http_forbidden"] == 2


def test_basic_auth_with_a_user_name() -> None:
    with Inputs(secret="s3cret", username="fluent") as inputs:
        assert httpx.post(inputs.url, json=request(1), auth=("other", "s3cret")).status_code == 403
        assert httpx.post(inputs.url, json=request(1), auth=("fluent", "s3cret")).status_code == 200


def test_503_under_backpressure_then_nothing_is_lost_after_retry() -> None:
    """Bodies in flight past the budget: 503 with Retry-After; the client retries and every record is counted."""
    budget = 32 * 1024
    with Inputs(limits=HTTPLimits(max_inflight_bytes=budget)) as inputs:
        held = json.dumps([request(i) for i in range(100)]).encode()
        assert budget // 2 < len(held) < budget
        # A slow client holds most of the budget: it sends its headers and half its body.
        slow = socket.create_connection(("127.0.0.1", inputs.http.port))
        slow.sendall(b"POST /llm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(held) + held[: len(held) // 2])
        deadline = time.monotonic() + 5
        while inputs.http.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        records = [request(1000 + i) for i in range(100)]
        body = json.dumps(records).encode()
        with httpx.Client(base_url=inputs.url) as client:
            first = client.post("/", content=body, headers={"Content-Type": "application/json"})
            assert first.status_code == 503
            assert first.headers["retry-after"] == "1"
            assert inputs.records() == {}
            # The slow client finishes; its records are taken; the budget is free again.
            slow.sendall(held[len(held) // 2:])
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")
            retried = client.post("/", content=body, headers={"Content-Type": "application/json"})
            assert retried.status_code == 200
        slow.close()
        assert inputs.records() == {"accepted": 200}
        assert inputs.stats.errors["http_backpressure"] == 1
        assert inputs.http.inflight == 0


def test_503_while_stopping_and_the_request_in_flight_is_answered() -> None:
    with Inputs() as inputs:
        body = json.dumps([request(i) for i in range(10)]).encode()
        in_flight = socket.create_connection(("127.0.0.1", inputs.http.port))
        in_flight.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        idle = socket.create_connection(("127.0.0.1", inputs.http.port))
        time.sleep(0.2)
        stopping = asyncio.run_coroutine_threadsafe(inputs.http.stop(grace=5.0), inputs.loop)
        time.sleep(0.2)
        assert idle.recv(100) == b""  # between requests: closed at once
        in_flight.sendall(body[10:])
        answer = in_flight.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
        stopping.result(10)
        assert inputs.records() == {"accepted": 10}
        with pytest.raises(httpx.ConnectError):
            httpx.post(inputs.url, json=request(1))


def test_idempotency_key_counts_a_retried_body_once() -> None:
    with Inputs() as inputs:
        headers = {"Idempotency-Key": "chunk-1"}
        first = httpx.post(inputs.url, json=[request(1), request(2)], headers=headers)
        again = httpx.post(inputs.url, json=[request(1), request(2)], headers=headers)
        assert first.status_code == again.status_code == 200
        assert again.json() == {**first.json(), "duplicate": True}
        assert inputs.records() == {"accepted": 2}


def test_tag_from_uri_path_and_tag_header() -> None:
    assert tag_from_path(b"/", "http.0") == "http.0"
    assert tag_from_path(b"/llm.inference?x=1", "http.0") == "llm.inference"
    assert tag_from_path(b"/llm/inference-1", "http.0") == "llm_inference_1"
    kube_tag = "kube.var.log.containers.llm-0_ml_vllm-abc.log"
    seen: list[str] = []
    with Inputs() as inputs:
        inputs.http.sink = lambda message: seen.append(message.tag)
        httpx.post(inputs.url + "/a/b", json=request(1))
        httpx.post(inputs.url + "/", json=request(1), headers={"X-Fluent-Tag": kube_tag})
    assert seen == ["a_b", kube_tag]


def test_date_key_becomes_the_entry_time() -> None:
    assert parse_date(1743848625.5) == 1743848625.5
    assert parse_date(1743848625) == 1743848625.0
    assert parse_date(1743848625500) == 1743848625.5  # epoch_ms
    assert parse_date("2025-04-05T10:23:45.500000Z") == 1743848625.5  # iso8601
    assert parse_date("2025-04-05 10:23:45.500000") == 1743848625.5  # java_sql_timestamp
    assert parse_date("yesterday") is None
    seen: list[Any] = []
    with Inputs() as inputs:
        inputs.http.sink = seen.append
        body = json.dumps([{"date": "2025-04-05T10:23:45.500000Z", "__internal__": {"log_metadata": {"a": 1}},
                            **request(1)}, {"date": "not a time", "x": 1}])
        assert httpx.post(inputs.url, content=body, headers={"Content-Type": "application/json"}).status_code == 200
    entries = seen[0].entries
    assert entries[0].time == 1743848625.5 and "date" not in entries[0].record
    assert entries[0].metadata == {"log_metadata": {"a": 1}} and "__internal__" not in entries[0].record
    assert entries[1].record == {"date": "not a time", "x": 1}


def test_sink_failure_is_500_and_counted() -> None:
    with Inputs() as inputs:
        def fail(message: Any) -> None:
            raise RuntimeError("boom")
        inputs.http.sink = fail
        assert httpx.post(inputs.url, json=request(1)).status_code == 500
        assert inputs.stats.errors["http_sink_failed"] == 1


def test_garbage_is_400_and_the_server_stays_up() -> None:
    with Inputs() as inputs:
        s = socket.create_connection(("127.0.0.1", inputs.http.port))
        s.sendall(b"\x16\x03\x01\x00\x10garbage that is not http\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
        s.close()
        assert inputs.stats.errors["http_bad_request"] == 1
        assert httpx.post(inputs.url, json=request(1)).status_code == 200


def test_slow_loris_is_cut_at_the_request_deadline() -> None:
    with Inputs(limits=HTTPLimits(request_timeout=0.5, idle_timeout=5.0)) as inputs:
        s = socket.create_connection(("127.0.0.1", inputs.http.port))
        s.settimeout(5)
        started = time.monotonic()
        s.sendall(b"POST / HTTP/1.1\r\n")
        answer = b""
        try:
            for _ in range(20):
                s.sendall(b"X-A: b\r\n")
                time.sleep(0.1)
                if time.monotonic() - started > 1.5:
                    break
            answer = s.recv(100)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.close()
        assert answer in (b"", answer[:0]) or answer.startswith(b"HTTP/1.1 408")
        assert inputs.stats.errors["http_request_timeout"] == 1
        assert time.monotonic() - started < 3


def test_connection_limits() -> None:
    with Inputs(limits=HTTPLimits(max_connections_per_address=2)) as inputs:
        held = [socket.create_connection(("127.0.0.1", inputs.http.port)) for _ in range(2)]
        time.sleep(0.1)
        third = socket.create_connection(("127.0.0.1", inputs.http.port))
        third.settimeout(5)
        try:
            data = third.recv(10)
        except ConnectionResetError:  # refused with a reset: what a closed slot looks like
            data = b""
        assert data == b""
        assert inputs.stats.errors["http_address_limit"] == 1
        for s in held:
            s.close()
        third.close()
        time.sleep(0.1)
        assert httpx.post(inputs.url, json=request(1)).status_code == 200


def test_tls_with_the_forward_certificate(tls_files) -> None:
    config = {"tls_cert": str(tls_files["server_crt"]), "tls_key": str(tls_files["server_key"])}
    with Inputs(**config) as inputs:
        reply = httpx.post(inputs.url, json=request(1), verify=ssl.create_default_context(cafile=tls_files["ca_crt"]))
        assert reply.status_code == 200
        assert inputs.stats.connections_opened["https"] == 1
        assert inputs.records() == {"accepted": 1}


def test_the_assembled_receiver_serves_the_http_input() -> None:
    """``serve --http-input-port``: the app wires the input to the same metrics and /metrics as Forward."""
    from ..support.receiver import ReceiverThread

    with ReceiverThread({"http_input_port": 0}) as receiver:
        port = receiver.receiver.http_input.port
        body = gzip.compress(fb_json([request(i) for i in range(7)], "json_lines"))
        reply = httpx.post(f"http://127.0.0.1:{port}/llm.inference", content=body,
                           headers={**FB_HEADERS, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
        assert reply.status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{receiver.metrics_port}/metrics").text
        samples = parse_text(metrics)
        assert samples[("qwen_fluent_records_total", frozenset({("outcome", "accepted")}))] == 7
        assert samples[("qwen_fluent_connections_total", frozenset({("transport", "http")}))] == 1
        assert sum(v for (name, _), v in samples.items() if name == "qwen_requests_total") == 7


def test_the_forward_shared_key_guards_the_http_input_too() -> None:
    from ..support.receiver import ReceiverThread

    with ReceiverThread({"http_input_port": 0, "shared_key": "k3y"}) as receiver:
        url = f"http://127.0.0.1:{receiver.receiver.http_input.port}/"
        assert httpx.post(url, json=request(1)).status_code == 401
        assert httpx.post(url, json=request(1), headers={"Authorization": "Bearer k3y"}).status_code == 200


# --- fluent-bit/fluent-bit-http.{yaml,conf}: the http output path ------------------------------

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "tests" / "deploy" / "data"

#: The options of Fluent Bit 4.x's http output (plugins/out_http/http.c config map), lower case.
OUT_HTTP_KEYS = {
    "proxy", "allow_duplicated_headers", "log_response_payload", "http.response_timeout",
    "http.read_idle_timeout", "http_user", "http_passwd", "aws_auth", "aws_service", "aws_region",
    "header_tag", "format", "json_date_format", "json_date_key", "compress", "header", "uri", "http_method",
    "headers_key", "body_key", "gelf_timestamp_key", "gelf_host_key", "gelf_short_message_key",
    "gelf_full_message_key", "gelf_level_key", "oauth2.enable", "oauth2.token_url", "oauth2.client_id",
    "oauth2.client_secret", "oauth2.scope", "oauth2.audience",
}


def _pipelines() -> dict[str, list]:
    from ..deploy import fluentbit

    read = lambda name: (REPO / "fluent-bit" / name).read_text(encoding="utf-8")
    return {"http.yaml": fluentbit.parse_yaml(read("fluent-bit-http.yaml")),
            "http.conf": fluentbit.parse_classic(read("fluent-bit-http.conf")),
            "forward.yaml": fluentbit.parse_yaml(read("fluent-bit.yaml"))}


def _options(section) -> dict[str, str]:
    from ..deploy import fluentbit

    return {k: fluentbit.canonical(v) for k, v in section.options.items()}


def test_http_pipelines_are_the_forward_one_with_an_http_output() -> None:
    from ..deploy import fluentbit

    p = _pipelines()
    yaml_sections, classic, forward = p["http.yaml"], p["http.conf"], p["forward.yaml"]
    assert [_options(s) for s in yaml_sections] == [_options(s) for s in classic]
    assert [_options(s) for s in yaml_sections[:-1]] == [_options(s) for s in forward[:-1]]
    output = yaml_sections[-1]
    assert (output.kind, output.plugin) == ("output", "http")
    assert set(output.options) - (fluentbit.OUTPUT_COMMON | OUT_HTTP_KEYS) == set()
    for name in ("fluent-bit-http.yaml", "fluent-bit-http.conf"):
        text = (REPO / "fluent-bit" / name).read_text(encoding="utf-8")
        sections = fluentbit.parse_yaml(text) if name.endswith(".yaml") else fluentbit.parse_classic(text)
        for key, line in sections[-1].lines.items():
            if key not in {"name", "match"}:
                assert not fluentbit.uncommented(text, line), f"{name}:{line}: {key} has no comment saying why"
    out = _options(output)
    assert out["format"] == "msgpack" and out["compress"] == "gzip" and out["header_tag"] == "X-Fluent-Tag"
    assert out["retry_limit"] == "no_limits" and out["alias"] == "qwen_fluent"


@pytest.mark.parametrize("capture", ["tail_cri_k8s", "tail_docker_k8s"])
def test_real_fluent_bit_records_through_the_shipped_http_output(capture: str) -> None:
    """Real Fluent Bit 4.2.8 records, sent as fluent-bit-http.yaml's output sends them, give Forward's samples."""
    from qwen_fluent.forward import NEED_DATA, ForwardConnection
    from qwen_fluent.forward import Message as ForwardMessage

    raw = (CAPTURES / capture / "conn-001.client.bin").read_bytes()
    conn = ForwardConnection()
    conn.receive_data(raw)
    messages = []
    while (event := conn.next_event()) is not NEED_DATA:
        if isinstance(event, ForwardMessage):
            messages.append(event)
    assert messages
    out = _options(_pipelines()["http.yaml"][-1])
    secret = "s3cret"
    auth = "Basic " + base64.b64encode(f"{out['http_user']}:{secret}".encode()).decode()
    with Inputs(secret=secret) as http_side:
        for message in messages:
            # format msgpack: the chunk as Fluent Bit holds it, [[EventTime, metadata], record] entries.
            chunk = b"".join(msgpack.packb([[event_time(e.time), e.metadata or {}], e.record]) for e in message.entries)
            reply = httpx.post(http_side.url + out["uri"], content=gzip.compress(chunk), headers={
                "Content-Type": "application/msgpack", "Content-Encoding": "gzip", "User-Agent": "Fluent-Bit",
                out["header_tag"]: message.tag, "Authorization": auth})
            assert reply.status_code == 200, reply.text
        via_http = http_side.samples()
        http_records = http_side.records()
    with Inputs() as forward_side:
        with socket.create_connection(("127.0.0.1", forward_side.forward.port)) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        via_forward = forward_side.samples()
        forward_records = forward_side.records()
    total = sum(len(m.entries) for m in messages)
    assert sum(http_records.values()) == total and http_records == forward_records
    assert request_samples(via_http) and request_samples(via_http) == request_samples(via_forward)
    logs = lambda s: {k: v for k, v in s.items() if k[0].startswith("qwen_log_messages")}
    assert logs(via_http) == logs(via_forward)


def test_bench_inputs_smoke_counts_every_record() -> None:
    """``bench/bench_inputs.py --smoke`` runs every input beside Forward and every count comes out exact."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_inputs.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith(("counts ok", "counts WRONG"))]
    assert len(lines) == 6 and all(line.strip().startswith("counts ok:") for line in lines), proc.stdout
    for name in ("Forward", "HTTP msgpack", "HTTP json_lines", "HTTP json_lines gzip", "HTTP json", "stdin"):
        assert any(row.strip().startswith(name) and row.rstrip().endswith("MiB") for row in proc.stdout.splitlines())


@pytest.mark.parametrize("defer", [True, False], ids=["sink-decodes", "input-decodes"])
def test_fluent_bit_group_markers_in_a_msgpack_body_are_skipped_and_counted(defer: bool) -> None:
    """Fluent Bit 4 chunks may hold group start/end entries (EventTime seconds -1 and -2): never records."""
    def marker(seconds: int) -> bytes:
        return msgpack.packb([[msgpack.ExtType(0, seconds.to_bytes(4, "big") + bytes(4)), {}], {"resource": {}}])

    body = marker(0xFFFFFFFF) + fb_msgpack([request(1), request(2)]) + marker(0xFFFFFFFE)
    with Inputs(defer=defer) as inputs:
        reply = httpx.post(inputs.url, content=body, headers={"Content-Type": "application/msgpack"})
        assert reply.status_code == 200
        assert reply.json() == {"records": 2, "accepted": 2, "unrecognised": 0, "invalid": 0}
        assert inputs.records() == {"accepted": 2, "group_marker": 2}
        cut = fb_msgpack([request(3)])[:-4]
        assert httpx.post(inputs.url, content=cut, headers={"Content-Type": "application/msgpack"}).status_code == 400
        assert inputs.records() == {"accepted": 2, "group_marker": 2}


def test_serve_workers_share_the_http_input_port() -> None:
    """``serve --workers 2 --http-input-port P``: both workers take requests on P; one /metrics counts them all."""
    import os
    import signal
    import subprocess
    import sys

    from ..support.prometheus import free_port

    fport, mport, hport = free_port(), free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qwen_fluent", "serve", "--workers", "2", "--host", "127.0.0.1",
                             "--port", str(fport), "--metrics-host", "127.0.0.1", "--metrics-port", str(mport),
                             "--http-input-port", str(hport), "--no-gpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{mport}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "serve --workers did not become ready"
            time.sleep(0.1)
        sent = 0
        for i in range(40):  # a new connection each time: the kernel spreads them over the workers
            deadline = time.monotonic() + 10
            while True:
                try:
                    reply = httpx.post(f"http://127.0.0.1:{hport}/llm", json=[request(i), request(i + 1000)])
                    break
                except httpx.ConnectError:  # a worker still binding
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert reply.status_code == 200
            sent += 2
        deadline = time.monotonic() + 15
        while True:
            samples = parse_text(httpx.get(f"http://127.0.0.1:{mport}/metrics").text)
            accepted = samples.get(("qwen_fluent_records_total", frozenset({("outcome", "accepted")})), 0)
            if accepted == sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert accepted == sent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read().decode()
