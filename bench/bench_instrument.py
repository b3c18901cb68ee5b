"""What RequestLogMiddleware costs per request: with and without it, in the same run. Prints; asserts nothing.

Run: ``python bench/bench_instrument.py [--requests 3000] [--http-requests 300]``.

Two measurements, each an A/B of the same application with and without the middleware,
interleaved in rounds (A, B, A, B, ...) so that drift of a shared machine hits both:

1. **In process** (no server, no sockets): the ASGI app is called directly with a
   ``receive`` that hands over an OpenAI request body and a ``send`` that drops the
   messages. The difference per request is the middleware's own CPU cost: wrapping,
   the body copies and parsing, building and writing the line (to ``/dev/null``
   through the file output, one ``write`` + ``flush`` per line, as to stdout).
2. **Over HTTP**: uvicorn on 127.0.0.1 and a raw socket client (one write per request,
   ``Connection: close``), requests alternating between the two servers; the latency a
   client sees, where the middleware's cost sits beside the server's.

Shapes: a non-streamed chat completion (~1.5 KiB JSON with usage) and a stream of
``--chunks`` one-token SSE chunks ending with a usage chunk (vLLM's shape with
``include_usage``). The pure ASGI app below does no work of its own, so the ratio is
the worst case: a real model spends milliseconds per token where this spends microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qwen_fluent.instrument import RequestLogMiddleware

REQUEST = json.dumps({"model": "qwen2.5-7b", "max_tokens": 64,
                      "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                   {"role": "user", "content": "Explain the Fluent Forward protocol. " * 20}]}).encode()


def _reply(stream: bool, chunks: int) -> list[tuple[bytes, bool]]:
    """The body messages of one response: (bytes, more_body)."""
    if not stream:
        doc = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "qwen2.5-7b",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 250},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 160, "completion_tokens": 250, "total_tokens": 410}}
        return [(json.dumps(doc).encode(), False)]
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "qwen2.5-7b"}
    parts = [(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"content": f" w{i}"},
                                                           "finish_reason": None}]}).encode() + b"\n\n", True)
             for i in range(chunks)]
    usage = {**base, "choices": [], "usage": {"prompt_tokens": 160, "completion_tokens": chunks}}
    parts.append((b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n", False))
    return parts


def make_app(chunks: int) -> Any:
    """A pure ASGI OpenAI-shaped app: reads the body, answers JSON or SSE by the path."""
    replies = {False: _reply(False, chunks), True: _reply(True, chunks)}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        stream = scope["path"].endswith("/stream")
        kind = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        for body, more_body in replies[stream]:
            await send({"type": "http.response.body", "body": body, "more_body": more_body})

    return app


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": [(b"content-type", b"application/json")], "client": None,
            "server": None}


async def _in_process(app: Any, path: str, count: int) -> float:
    scope = _scope(path)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": REQUEST, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    start = time.perf_counter()
    for _ in range(count):
        await app(scope, receive, send)
    return (time.perf_counter() - start) / count


def in_process(args: argparse.Namespace) -> None:
    plain = make_app(args.chunks)
    wrapped = RequestLogMiddleware(plain, output=os.devnull, gpu_memory="off", environ={},
                                   paths=("/v1/chat/completions", "/v1/chat/completions/stream"))
    print(f"in process ({args.requests:,} requests per side, best of {args.rounds} interleaved rounds):")
    for label, path in (("non-streamed JSON", "/v1/chat/completions"),
                        (f"stream of {args.chunks} chunks", "/v1/chat/completions/stream")):
        a, b = [], []
        for _ in range(args.rounds):
            a.append(asyncio.run(_in_process(plain, path, args.requests // args.rounds)))
            b.append(asyncio.run(_in_process(wrapped, path, args.requests // args.rounds)))
        base, cost = min(a), min(b)
        chunks = args.chunks + 1 if "stream" in path else 1
        print(f"  {label:24s} without {base * 1e6:8.1f} µs/request   with {cost * 1e6:8.1f} µs/request   "
              f"overhead {(cost - base) * 1e6:7.1f} µs/request ({(cost - base) * 1e6 / chunks:.1f} µs per body "
              f"message)   ratio {cost / base:5.2f}x")


class _Server:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _request(path: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(REQUEST)}\r\n\r\n").encode()
    return head + REQUEST


def _one(port: int, request: bytes) -> float:
    # One sendall and read to EOF: a client that splits headers and body into two writes meets
    # Nagle and delayed ACK on loopback (40 ms stalls that have nothing to do with the server).
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        while sock.recv(65536):
            pass
    return time.perf_counter() - start


def over_http(args: argparse.Namespace) -> None:
    plain = make_app(args.chunks)
    servers = {"without": _Server(plain),
               "with": _Server(RequestLogMiddleware(plain, output=os.devnull, gpu_memory="off", environ={},
                                                    paths=("/v1/chat/completions", "/v1/chat/completions/stream")))}
    ports = {name: int(server.url.rsplit(":", 1)[1]) for name, server in servers.items()}
    print(f"over HTTP (uvicorn on 127.0.0.1, a raw socket client, {args.http_requests} requests per side, "
          "alternating; median, and the median of the paired differences):")
    try:
        for label, path in (("non-streamed JSON", "/v1/chat/completions"),
                            (f"stream of {args.chunks} chunks", "/v1/chat/completions/stream")):
            request = _request(path)
            for port in ports.values():  # warm
                for _ in range(10):
                    _one(port, request)
            times: dict[str, list[float]] = {"without": [], "with": []}
            for i in range(args.http_requests):
                order = ("without", "with") if i % 2 == 0 else ("with", "without")
                for name in order:
                    times[name].append(_one(ports[name], request))
            base, cost = statistics.median(times["without"]), statistics.median(times["with"])
            paired = statistics.median(b - a for a, b in zip(times["without"], times["with"]))
            print(f"  {label:24s} without {base * 1e3:7.3f} ms   with {cost * 1e3:7.3f} ms   "
                  f"overhead (paired) {paired * 1e6:7.1f} µs   ratio {cost / base:5.2f}x")
    finally:
        for server in servers.values():
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="in-process requests per side")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--http-requests", type=int, default=300, help="HTTP requests per side (0: skip)")
    parser.add_argument("--chunks", type=int, default=128, help="content chunks per streamed response")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    in_process(args)
    if args.http_requests:
        over_http(args)


if __name__ == "__main__":
    main()
