"""``RequestLogMiddleware``: one JSON line per inference request, from any ASGI 3 server.

Pure ASGI: it wraps ``receive`` and ``send`` and never replaces a message, so the
request reaches the application and the response reaches the client byte for byte as
without it, and a streamed response stays streamed (each body message is passed on
first and read after). Loaded three ways, all building ``cls(app, **options)``:

- ``vllm serve ... --middleware qwen_fluent.instrument.RequestLogMiddleware``: vLLM
  imports the name and, as it is a class, calls ``app.add_middleware(cls)`` (no options:
  configure it with ``QWEN_FLUENT_INSTRUMENT_*`` variables);
- ``app.add_middleware(RequestLogMiddleware, paths=...)`` in Starlette or FastAPI;
- ``app = RequestLogMiddleware(app)`` around any ASGI application.

Timing (monotonic clock, from the moment the server hands the request to the middleware):
``total_time_ms`` ends when the last body message has been handed to the server;
``time_to_first_token_ms`` when the first *content* chunk of a stream was; queue and
inference time are copied from response headers when the application sets them (names
configurable), or from ``scope["state"]["queue_time_ms"]`` / ``["inference_time_ms"]``
(``request.state.inference_time_ms = ...`` in Starlette and FastAPI), which a streamed
response can still set after its headers have left; never invented.

Status, first match wins: the client went away before the response ended (an
``http.disconnect`` received, ``send`` raising ``OSError``, or the task cancelled) ->
``cancelled``; the application raised before its last body message -> ``error`` with the
exception's class name as ``error_type`` (raised after it, a 5xx that an outer error handler
sent for it keeps the name, and a background task failing after a complete answer leaves the
answer's status); the body reported an error (an error object, or an error event in the
stream) -> ``error``; else from the HTTP status (2xx ``success``, 408/504 ``timeout``,
499 ``cancelled``, other 4xx ``client_error``, 5xx ``error``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import datetime, timezone
from typing import Any

import msgspec

from .config import MAX_ID_LENGTH, InstrumentConfig
from .gpu import GpuMemoryProbe
from .output import Sink, resolve_output
from .parse import EventStream, JsonBody, RequestBody, Summary

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SUCCESS, ERROR, CLIENT_ERROR, TIMEOUT, CANCELLED, UNKNOWN = (
    "success", "error", "client_error", "timeout", "cancelled", "unknown")

#: A header value longer than this is not a duration a server wrote.
_MAX_NUMBER = 32
#: Durations above a day are unit errors (the receiver drops them too).
_MAX_MS = 86_400_000.0
_MIB = float(2**20)

_log = logging.getLogger(__name__)
_encode = msgspec.json.encode


def status_of(code: int) -> str:
    """The status word for an HTTP status code (the receiver's table, docs/records.md)."""
    if 200 <= code < 300:
        return SUCCESS
    if code in (408, 504):
        return TIMEOUT
    if code == 499:
        return CANCELLED
    if 400 <= code < 500:
        return CLIENT_ERROR
    if 500 <= code < 600:
        return ERROR
    return UNKNOWN


def _milliseconds(raw: bytes) -> float | None:
    if len(raw) > _MAX_NUMBER:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0.0 <= value <= _MAX_MS else None


def _state_ms(value: Any, fallback: float | None) -> float | None:
    """A duration the app left in ``scope["state"]``, if usable; else what the header said."""
    if (type(value) is int or type(value) is float) and 0.0 <= value <= _MAX_MS:
        return float(value)
    return fallback


def _header_text(raw: bytes) -> str | None:
    text = raw.decode("latin-1").strip()
    return text[:MAX_ID_LENGTH] if text else None


class RequestLogMiddleware:
    """Writes one JSON line per request to the configured paths; see the module docstring.

    Every keyword left ``None`` comes from ``QWEN_FLUENT_INSTRUMENT_<NAME>`` (``environ``,
    default :data:`os.environ`), else the default in :class:`InstrumentConfig`. ``output``
    is described in :mod:`qwen_fluent.instrument.output`; ``gpu_memory`` is a mode word
    (``auto``, ``torch``, ``nvml``, ``off``) or any callable returning bytes or ``None``.
    Bad settings raise :class:`~qwen_fluent.instrument.InstrumentConfigError` here, at
    start; once built, nothing it does raises into a request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: tuple[str, ...] | list[str] | None = None,
        output: Any = None,
        queue_header: str | None = None,
        inference_header: str | None = None,
        request_id_header: str | None = None,
        gpu_memory: str | Callable[[], int | None] | None = None,
        config: InstrumentConfig | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if config is None:
            config = InstrumentConfig.from_env(
                environ, paths=paths, queue_header=queue_header, inference_header=inference_header,
                request_id_header=request_id_header, gpu_memory=gpu_memory if isinstance(gpu_memory, str) else None)
        self.app = app
        self.config = config
        self._sink: Sink = resolve_output(output, environ)
        self._gpu: Callable[[], int | None] = (
            gpu_memory if callable(gpu_memory)
            else GpuMemoryProbe(config.gpu_memory, refresh_s=config.gpu_refresh_s))
        self._paths = frozenset(config.paths)
        self._queue = config.queue_header.encode("latin-1")
        self._inference = config.inference_header.encode("latin-1")
        self._request_id = config.request_id_header.encode("latin-1")
        #: Lines handed to the output so far.
        self.lines_written = 0
        #: Lines lost because the output raised (a closed stdout, a full disk); logged once.
        self.write_errors = 0

    def _route(self, scope: Scope) -> str | None:
        path = scope.get("path", "")
        if path in self._paths:
            return path
        root = scope.get("root_path", "")
        if root and path.startswith(root) and path[len(root):] in self._paths:
            return path[len(root):]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, route, scope, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            exchange.exception = exc
            raise
        finally:
            self._finish(exchange)

    def _finish(self, exchange: _Exchange) -> None:
        try:
            line = _encode(exchange.line(self._gpu)).decode()
        except Exception:  # noqa: BLE001 - a bug here must not fail a request that already ended
            self.write_errors += 1
            _log.exception("qwen_fluent.instrument: could not build a request line")
            return
        try:
            self._sink(line)
        except Exception:  # noqa: BLE001 - OSError, a logger handler's error: count, tell once, keep serving
            self.write_errors += 1
            if self.write_errors == 1:
                _log.exception("qwen_fluent.instrument: could not write a request line (counted, not retried)")
            return
        self.lines_written += 1


class _Exchange:
    """One request as it passes: the wrapped ``receive``/``send`` and what they observed."""

    __slots__ = (
        "_receive",
        "_send",
        "cancelled",
        "ended",
        "events",
        "exception",
        "final_sent",
        "header_request_id",
        "inference_ms",
        "json_body",
        "mw",
        "queue_ms",
        "request",
        "response_started",
        "route",
        "scope",
        "sse",
        "started",
        "status",
        "summary",
    )

    def __init__(self, mw: RequestLogMiddleware, route: str, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = time.perf_counter()
        self.mw = mw
        self.route = route
        self.scope = scope
        self._receive = receive
        self._send = send
        self.request = RequestBody(mw.config.max_request_body)
        self.status: int | None = None
        self.response_started = False
        self.final_sent = False
        self.ended: float | None = None
        self.cancelled = False
        self.exception: BaseException | None = None
        self.json_body: JsonBody | None = None
        self.events: EventStream | None = None
        self.summary = Summary()
        self.queue_ms: float | None = None
        self.inference_ms: float | None = None
        self.header_request_id: str | None = None
        self.sse = False

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message.get("type")
        if kind == "http.request":
            self.request.feed(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.disconnect" and not self.final_sent:
            # After the last body message a server answers every receive() with a disconnect;
            # only one that comes before it means the client left.
            self.cancelled = True
        return message

    async def send(self, message: Message) -> None:
        now = time.perf_counter()
        kind = message.get("type")
        if kind == "http.response.body":
            more = message.get("more_body", False)
            if not more:
                self.final_sent = True
            try:
                await self._send(message)
            except OSError:  # ASGI 2.4 servers raise it when the client is gone
                self.cancelled = True
                raise
            body = message.get("body", b"")
            if self.events is not None:
                if body:
                    self.events.feed(body, now, self.summary)
            elif self.json_body is not None:
                self.json_body.feed(body)
            if not more:
                self.ended = time.perf_counter()
            return
        try:
            await self._send(message)
        except OSError:
            self.cancelled = True
            raise
        if kind == "http.response.start":
            self._start(message)

    def _start(self, message: Message) -> None:
        self.response_started = True
        status = message.get("status")
        self.status = status if type(status) is int else None
        content_type = b""
        encoded = False
        mw = self.mw
        for name, value in message.get("headers") or ():
            name = name.lower()
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-encoding":
                encoded = value.strip().lower() not in (b"", b"identity")
            elif name == mw._queue:
                self.queue_ms = _milliseconds(value)
            elif name == mw._inference:
                self.inference_ms = _milliseconds(value)
            elif name == mw._request_id:
                self.header_request_id = _header_text(value)
        config = mw.config
        if content_type.startswith(b"text/event-stream"):
            self.sse = True
            if not encoded:
                self.events = EventStream(config.max_event_line)
        elif not encoded and (content_type.startswith(b"application/json") or b"+json" in content_type):
            self.json_body = JsonBody(config.max_response_body)

    def _request_id(self) -> str:
        wanted = self.mw._request_id
        for name, value in self.scope.get("headers") or ():
            if name.lower() == wanted:
                found = _header_text(value)
                if found:
                    return found
        return self.header_request_id or self.summary.response_id or f"req_{uuid.uuid4().hex}"

    def line(self, gpu: Callable[[], int | None]) -> dict[str, Any]:
        """The request's line as a dict, in the order it is written."""
        finished = time.perf_counter()
        summary = self.summary
        if self.json_body is not None:
            self.json_body.finish(summary)
            self.json_body = None
        exception = self.exception
        status_code = self.status
        error_type = None
        if exception is not None and self.ended is not None and not self.cancelled and status_code is not None:
            # Raised after the last byte left. Either an error handler outside us (Starlette's
            # ServerErrorMiddleware) answered 500 for it and re-raised: keep its name; or a
            # background task failed after a complete answer: the answer's status stands.
            if status_code >= 500:
                self.summary.error_type = self.summary.error_type or type(exception).__name__
            exception = None
        if self.cancelled or isinstance(exception, asyncio.CancelledError):
            status = CANCELLED
        elif exception is not None:
            status = ERROR
            error_type = type(exception).__name__
            if status_code is None:
                status_code = 500  # what uvicorn, hypercorn and Starlette answer for an app that raised
        elif summary.body_error:
            status = ERROR if status_code is None or status_code < 400 else status_of(status_code)
            error_type = summary.error_type
        elif status_code is not None:
            status = status_of(status_code)
            error_type = summary.error_type
        else:
            status = ERROR  # returned without a response: the server answers 500 itself
            error_type = "no_response"
            status_code = 500

        end = self.ended if self.ended is not None else finished
        line: dict[str, Any] = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": self._request_id(),
            "method": self.scope.get("method", ""),
            "path": self.route,
        }
        model = summary.model or self.request.model
        if model:
            line["model"] = model
        line["stream"] = self.request.stream if self.request.stream is not None else self.sse
        if summary.output_tokens is not None:
            if summary.input_tokens is not None:
                line["input_tokens"] = summary.input_tokens
            line["output_tokens"] = summary.output_tokens
            line["tokens_estimated"] = False
        elif self.sse and self.events is not None:
            # No usage in the stream: one content chunk is one token for vLLM and most
            # servers (a chunk per decode step); marked, so nobody takes it for a count.
            line["output_tokens"] = summary.content_chunks
            line["tokens_estimated"] = True
        line["total_time_ms"] = round((end - self.started) * 1000.0, 3)
        if summary.first_content is not None:
            line["time_to_first_token_ms"] = round((summary.first_content - self.started) * 1000.0, 3)
        state = self.scope.get("state")
        if type(state) is dict:  # set by the app through request.state: final even for a stream
            self.queue_ms = _state_ms(state.get("queue_time_ms"), self.queue_ms)
            self.inference_ms = _state_ms(state.get("inference_time_ms"), self.inference_ms)
        if self.queue_ms is not None:
            line["queue_time_ms"] = self.queue_ms
        if self.inference_ms is not None:
            line["inference_time_ms"] = self.inference_ms
        memory = gpu()
        if memory is not None:
            line["gpu_memory_mb"] = round(memory / _MIB, 1)
        line["status"] = status
        if status_code is not None:
            line["http_status"] = status_code
        if error_type:
            line["error_type"] = error_type
        return line
