"""A Starlette app that answers like an OpenAI-compatible server (vLLM's shapes), and a uvicorn harness.

The test peer for the middleware: real HTTP through a real ASGI server. Its behaviour is
chosen per request by fields a real client could send (the fake ignores nothing it
does not know): ``model``, ``stream``, ``stream_options.include_usage``,
``max_tokens`` (how many one-token content chunks), and the test-only ``x_scenario``
(``ok``, ``no_usage``, ``bad_request``, ``unavailable``, ``raise_before``, ``raise_midstream``,
``raise_after``, ``error_event``), ``x_first_delay`` / ``x_chunk_delay`` (seconds), ``x_timings`` (queue and
inference time as response headers) and ``x_state_timings`` (the same through ``request.state``
at the end of a stream).
Everything it returns is deterministic (fixed ``created``, ``id`` from the
``x-test-id`` header), so the bytes served with and without the middleware can be
compared. ``x-body-sha256`` on every response is the SHA-256 of the request body as
the app received it: proof that the middleware passed it on unchanged.

Run as a module it serves the app the way ``vllm serve --middleware NAME`` does (see
:func:`build_like_vllm`) and prints ``READY <port>`` on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import inspect
import json
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CREATED = 1_700_000_000


class EngineCrashed(RuntimeError):
    """Raised by the fake engine for the ``raise_*`` scenarios."""


def _prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) for m in body["messages"]) + 3
    return len(str(body.get("prompt", "")).split())


def _headers(request: Request, raw: bytes, body: dict[str, Any]) -> dict[str, str]:
    headers = {"x-body-sha256": hashlib.sha256(raw).hexdigest()}
    if body.get("x_timings"):
        headers["x-queue-time-ms"] = "12.5"
        headers["x-inference-time-ms"] = "340"
        headers["x-engine-queue"] = "7"
    return headers


async def completions(request: Request) -> Response:
    raw = await request.body()
    chat = request.url.path.endswith("/chat/completions")
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    headers = _headers(request, raw, body)
    scenario = body.get("x_scenario", "ok")
    model = body.get("model", "qwen2.5-7b")
    rid = ("chatcmpl-" if chat else "cmpl-") + request.headers.get("x-test-id", "test")
    n = int(body.get("max_tokens", 5))
    if scenario == "bad_request":
        error = {"error": {"message": "max_tokens is too large", "type": "BadRequestError", "param": None, "code": 400}}
        return JSONResponse(error, status_code=400, headers=headers)
    if scenario == "unavailable":
        error = {"object": "error", "message": "engine overloaded", "type": "ServiceUnavailableError", "code": 503}
        return JSONResponse(error, status_code=503, headers=headers)
    if scenario == "raise_before":
        raise EngineCrashed("the engine died before answering")
    prompt = _prompt_tokens(body)
    usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
    if not body.get("stream"):
        await asyncio.sleep(float(body.get("x_first_delay", 0)))
        text = "".join(f"tok{i} " for i in range(n))
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"} if chat
                  else {"index": 0, "text": text, "finish_reason": "length"})
        doc: dict[str, Any] = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                               "created": CREATED, "model": model, "choices": [choice]}
        if scenario != "no_usage":
            doc["usage"] = usage
        background = None
        if scenario == "raise_after":  # a background task that fails once the answer has left
            async def fail() -> None:
                raise EngineCrashed("the cleanup after the answer failed")
            background = BackgroundTask(fail)
        return JSONResponse(doc, headers=headers, background=background)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    first_delay = float(body.get("x_first_delay", 0))
    chunk_delay = float(body.get("x_chunk_delay", 0))
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        doc = {"id": rid, "object": kind, "created": CREATED, "model": model, "choices": choices, **extra}
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    async def stream():
        if chat:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        await asyncio.sleep(first_delay)
        for i in range(n):
            if i and chunk_delay:
                await asyncio.sleep(chunk_delay)
            if scenario == "raise_midstream" and i == 2:
                raise EngineCrashed("the engine died mid-stream")
            if scenario == "error_event" and i == 2:
                error = {"error": {"message": "decode failed", "type": "InternalServerError", "code": 500}}
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                return
            piece = ({"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None} if chat
                     else {"index": 0, "text": f"tok{i} ", "finish_reason": None})
            yield event([piece])
        last = ({"index": 0, "delta": {}, "finish_reason": "length"} if chat
                else {"index": 0, "text": "", "finish_reason": "length"})
        yield event([last])
        if body.get("x_state_timings"):  # a stream's timings, known only now: through request.state
            request.state.queue_time_ms = 1.5
            request.state.inference_time_ms = 55
        if include_usage:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "qwen2.5-7b", "object": "model"}]})


def make_app() -> Starlette:
    """A fresh fake OpenAI server (each test wraps its own)."""
    return Starlette(routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])


def build_like_vllm(middleware: list[str]) -> Starlette:
    """The fake app with ``--middleware`` names loaded under vLLM's contract.

    The contract, as ``build_app`` in vllm/entrypoints/openai/api_server.py applies it: a
    dotted name is split at its last dot, the module imported and the attribute taken; a
    class is registered with ``app.add_middleware(cls)`` and no options, a coroutine function
    as an ``http`` middleware function, anything else is refused.
    """
    app = make_app()
    for dotted in middleware:
        module_name, _, attribute = dotted.rpartition(".")
        target = getattr(importlib.import_module(module_name), attribute)
        if inspect.isclass(target):
            app.add_middleware(target)
        elif inspect.iscoroutinefunction(target):
            app.middleware("http")(target)
        else:
            raise TypeError(f"--middleware {dotted}: neither a class nor a coroutine function")
    return app


class Served:
    """An ASGI app served by uvicorn on a free 127.0.0.1 port, in a thread of this process."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False,
                                                    **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--middleware", action="append", default=[])
    args = parser.parse_args()
    app = build_like_vllm(args.middleware)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(f"READY {sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
