#!/usr/bin/env python3
"""An OpenAI-compatible inference service running a (randomly initialised) Qwen2 model.

    python3 examples/inference_server/server.py                  # tiny Qwen2 on CPU, :8000
    python3 examples/inference_server/server.py --full-size      # Qwen2.5-7B shape on a GPU
    python3 examples/inference_server/server.py --port 0         # any free port (printed on stderr)

Endpoints: ``POST /v1/chat/completions`` (streamed with ``"stream": true``, the
final chunk carries ``usage`` when ``stream_options.include_usage`` is set, as
OpenAI and vLLM do), ``GET /v1/models``, ``GET /health``. Bad requests get a
4xx with an OpenAI-shaped error body; a full queue gets 503.

It is the first hop of the chain qwen-fluent measures: the app is wrapped in
``qwen_fluent.instrument.RequestLogMiddleware``, which writes one JSON line per
request to **stdout** (what Fluent Bit tails). Everything else the process says
goes to stderr, so stdout stays one JSON object per line. The engine's real
queue and inference times reach the middleware as the response headers
``x-queue-time-ms`` and ``x-inference-time-ms``. A streamed response's headers
leave before generation ends, so it carries the queue time only (its headers
are sent when a worker takes the request, so that time is final), and the log
line leaves its inference time out rather than guessing it.

``--no-request-log`` serves without the middleware (to measure its cost, or to
run before qwen_fluent.instrument exists).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import torch
import uvicorn
from engine import (
    ByteTokenizer,
    Engine,
    EngineStopped,
    Job,
    QueueFull,
    build_model,
    qwen25_7b_config,
    tiny_config,
)
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("inference_server")

#: A request body larger than this is refused with 413 before it is parsed. 1 MiB is
#: ~1 M prompt bytes, far past any context this service has (the 7B shape's is 32768
#: tokens); it stops a client from making the server buffer an unbounded body.
MAX_BODY_BYTES = 1 << 20
#: ``max_tokens`` when the request gives none. OpenAI's and vLLM's default is "the rest
#: of the context"; a random model would then talk for 2048 tokens per request, so the
#: example picks a short default and says so.
DEFAULT_MAX_TOKENS = 64
QUEUE_HEADER = "x-queue-time-ms"
INFERENCE_HEADER = "x-inference-time-ms"
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


class BadRequest(Exception):
    """The request is malformed or cannot be served; becomes a 4xx with an OpenAI error body."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 error_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.error_type = error_type


def error_response(message: str, status: int, error_type: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body OpenAI's API (and vLLM's) returns."""
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}}, status_code=status,
        headers=headers,
    )


def _ms(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else ""


class Service:
    """The HTTP side: validates requests, submits them to the :class:`Engine`, shapes responses."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.created = int(time.time())

    # -- validation ---------------------------------------------------------------------
    async def _body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes", status=413, error_type="RequestTooLarge")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > MAX_BODY_BYTES:
                raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes", status=413,
                                 error_type="RequestTooLarge")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _job(self, body: dict[str, Any]) -> tuple[Job, bool, bool]:
        """The validated request as a :class:`Job`, plus (stream, include_usage)."""
        model = body.get("model", self.model_name)
        if not isinstance(model, str):
            raise BadRequest("'model' must be a string", param="model")
        if model != self.model_name:
            raise BadRequest(f"The model `{model}` does not exist.", status=404, param="model",
                             error_type="NotFoundError")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        turns: list[tuple[str, str]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise BadRequest(f"messages[{i}] needs a 'role' among {sorted(ROLES)}", param="messages")
            content = message.get("content", "")
            if isinstance(content, list):  # content parts: only text ones
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise BadRequest(f"messages[{i}].content parts must be text parts", param="messages")
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise BadRequest(f"messages[{i}].content must be a string", param="messages")
            turns.append((message["role"], content))
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", param="stream")
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not stream:
                raise BadRequest("'stream_options' is only allowed when 'stream' is true", param="stream_options")
            if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
                raise BadRequest("'stream_options.include_usage' must be a boolean", param="stream_options")
            include_usage = options.get("include_usage", False)
        n = body.get("n", 1)
        if n != 1 or isinstance(n, bool):
            raise BadRequest("only n=1 is supported", param="n")
        temperature = body.get("temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise BadRequest("'temperature' must be a number from 0 to 2", param="temperature")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadRequest("'seed' must be an integer", param="seed")
        ignore_eos = body.get("ignore_eos", False)  # vLLM's extension
        if not isinstance(ignore_eos, bool):
            raise BadRequest("'ignore_eos' must be a boolean", param="ignore_eos")
        prompt = self.tokenizer.apply_chat_template(turns)
        room = self.engine.context_length - len(prompt)
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = body.get(key)
        if max_tokens is None:
            max_tokens = min(DEFAULT_MAX_TOKENS, room)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"'{key}' must be a positive integer", param=key)
        if room < 1 or max_tokens > room:
            # vLLM's wording, so that log readers and clients see what they would see there
            raise BadRequest(
                f"This model's maximum context length is {self.engine.context_length} tokens. However, you "
                f"requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, {max_tokens} in "
                f"the completion). Please reduce the length of the messages or completion.", param="messages")
        job = Job(prompt_ids=prompt, max_tokens=max_tokens, temperature=float(temperature), seed=seed,
                  ignore_eos=ignore_eos)
        return job, stream, include_usage

    # -- endpoints ---------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "qwen-fluent-example",
            "max_model_len": self.engine.context_length,
        }]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "running": self.engine.busy, "waiting": self.engine.waiting})

    async def chat_completions(self, request: Request) -> Response:
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        # The caller's request id, echoed on every answer (the middleware logs it as request_id).
        headers = {"x-request-id": request.headers.get("x-request-id") or completion_id}
        try:
            body = await self._body(request)
            job, stream, include_usage = self._job(body)
        except BadRequest as exc:
            return error_response(str(exc), exc.status, exc.error_type, exc.param, headers)
        except ClientDisconnect:
            return Response(status_code=499, headers=headers)
        try:
            self.engine.submit(job)
        except (QueueFull, EngineStopped) as exc:
            return error_response(f"server busy: {exc}", 503, "ServiceUnavailableError", headers=headers)
        try:
            first = await job.events.get()  # ("started",), or an error if shut down while queued
        except BaseException:
            job.cancel()
            raise
        if first[0] == "error":
            return error_response(first[1], 503, "ServiceUnavailableError", headers=headers)
        if stream:
            headers[QUEUE_HEADER] = _ms(job.queue_ms)
            return StreamingResponse(self._stream(job, completion_id, include_usage),
                                     media_type="text/event-stream", headers=headers)
        text: list[str] = []
        try:
            while True:
                event = await job.events.get()
                if event[0] == "token":
                    text.append(event[2])
                elif event[0] == "done":
                    break
                else:
                    return error_response(f"generation failed: {event[1]}", 500, "InternalServerError",
                                          headers=headers)
        except BaseException:
            job.cancel()
            raise
        headers[QUEUE_HEADER] = _ms(job.queue_ms)
        headers[INFERENCE_HEADER] = _ms(job.inference_ms)
        return JSONResponse({
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                         "logprobs": None, "finish_reason": job.finish_reason}],
            "usage": self._usage(job),
        }, headers=headers)

    def _usage(self, job: Job) -> dict[str, int]:
        prompt, completion = len(job.prompt_ids), len(job.completion_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _stream(self, job: Job, completion_id: str, include_usage: bool) -> AsyncIterator[bytes]:
        """Server-sent events as OpenAI and vLLM send them: a role chunk, one chunk per token,
        a finish chunk, the usage chunk when asked for, ``data: [DONE]``."""
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": self.model_name,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            if include_usage:
                payload.setdefault("usage", None)
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                event = await job.events.get()
                if event[0] == "token":
                    yield chunk({"content": event[2]})
                elif event[0] == "done":
                    yield chunk({}, job.finish_reason)
                    break
                else:
                    # The 200 header is gone: the error is an event in the stream (vLLM's shape),
                    # and the stream ends without [DONE].
                    error = {"error": {"message": f"generation failed: {event[1]}", "type": "InternalServerError",
                                       "code": 500}}
                    yield b"data: " + json.dumps(error).encode() + b"\n\n"
                    return
            if include_usage:
                usage = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                         "model": self.model_name, "choices": [], "usage": self._usage(job)}
                yield b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            job.cancel()  # a no-op when finished; stops generation when the client went away


def build_app(engine: Engine, model_name: str, *, request_log: bool, on_ready: Any = None) -> Any:
    """The Starlette app, its lifespan starting and stopping the engine, wrapped in the middleware."""
    service = Service(engine, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await engine.stop()

    app: Any = Starlette(routes=[
        Route("/v1/chat/completions", service.chat_completions, methods=["POST"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
    ], lifespan=lifespan)
    if request_log:
        from qwen_fluent.instrument import RequestLogMiddleware

        app = RequestLogMiddleware(app)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (default 8000)")
    parser.add_argument("--full-size", action="store_true",
                        help="the Qwen2.5-7B-Instruct shape (7.6 G parameters, 15 GB in bf16): for a GPU")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="context length (default 2048 tiny, 32768 full size)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests generated at once (default 2)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting before 503s (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--model-name", help="the name clients ask for (default qwen2-tiny-random or "
                                             "qwen2.5-7b-instruct-random)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default 1 on CPU: the workers are the parallelism)")
    parser.add_argument("--no-request-log", action="store_true",
                        help="serve without qwen_fluent.instrument.RequestLogMiddleware")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    if not on_gpu:
        torch.set_num_threads(args.torch_threads or 1)
    elif args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.full_size:
        config = qwen25_7b_config(args.max_model_len or 32768)
        name = args.model_name or "qwen2.5-7b-instruct-random"
    else:
        config = tiny_config()
        if args.max_model_len:
            config.max_position_embeddings = args.max_model_len
        name = args.model_name or "qwen2-tiny-random"

    started = time.perf_counter()
    model = build_model(config, seed=args.seed, device=device, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    log.info("model %s: Qwen2ForCausalLM, %.3g parameters, %s on %s, built in %.1f s", name, params,
             str(dtype).removeprefix("torch."), device, time.perf_counter() - started)
    engine = Engine(model, ByteTokenizer(), concurrency=args.concurrency, max_queue=args.max_queue, seed=args.seed)

    # Bind first, so that --port 0 can say which port it got before serving.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]

    def ready() -> None:
        # The line tests and scripts wait for; on stderr, as stdout is the request log.
        print(f"listening on http://{args.host}:{port} (pid {os.getpid()})", file=sys.stderr, flush=True)

    app = build_app(engine, name, request_log=not args.no_request_log, on_ready=ready)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, log_level="warning",
                                           timeout_graceful_shutdown=10))
    server.run(sockets=[sock])
    if on_gpu:
        log.info("peak GPU memory allocated by torch: %.0f MiB", torch.cuda.max_memory_allocated() / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
