"""Hugging Face TGI's per-request ``Success`` event, JSON (``--json-output``) or plain.

TGI's router instruments each endpoint with a span whose fields it fills when
the request ends, then logs ``Success`` inside it. The timings are Rust
``Duration`` Debug strings (``"1.234567ms"``, ``"2.1s"``, ``"850µs"``).
With ``--json-output`` (tracing-subscriber's JSON format, ``flatten_event``)::

    {"timestamp":"2025-04-05T10:23:47.123456Z","level":"INFO","message":"Success",
     "target":"text_generation_router::server","filename":"router/src/server.rs","line_number":545,
     "span":{"inference_time":"1.2s","parameters":"GenerateParameters { ... }","queue_time":"120µs",
             "seed":"None","time_per_token":"15ms","total_time":"1.25s","validation_time":"3ms",
             "name":"generate"},
     "spans":[{"name":"generate", ...}]}

Without it, the plain tracing format puts the same fields in the line::

    2025-04-05T10:23:47.123456Z  INFO generate{parameters=GenerateParameters { ... }
    total_time="1.25s" validation_time="3ms" queue_time="120µs" inference_time="1.2s"
    time_per_token="15ms" seed="None"}: text_generation_router::server: router/src/server.rs:545: Success

TGI does not log token counts. ``output_tokens`` is derived as
``round(inference_time / time_per_token)``: TGI computes ``time_per_token`` as
``inference_time / generated_tokens`` in whole nanoseconds and prints both at
full precision, so the ratio lands within a hair of the integer.
"""

from __future__ import annotations

import re
from typing import Any

from .values import MAX_TOKENS, duration_string

#: The router's span names and the route each serves.
SPAN_PATHS = {
    "generate": "/generate",
    "generate_stream": "/generate_stream",
    "compat_generate": "/",
    "completions": "/v1/completions",
    "chat_completions": "/v1/chat/completions",
}

_PLAIN_FIELD = re.compile(
    r'\b(total_time|queue_time|inference_time|time_per_token)="?([0-9][0-9.]{0,24}(?:ns|µs|μs|us|ms|s))'
)
_PLAIN_SPAN = re.compile(r"(?:^|\s)(" + "|".join(sorted(SPAN_PATHS, key=len, reverse=True)) + r")\{")
_MAX_SPANS = 16  # a request's span list is 1-3 deep; bounded against a hostile list


class Timings:
    """The timings of one TGI request, in seconds, plus the route it served."""

    __slots__ = ("total", "queue", "inference", "per_token", "path")

    def __init__(self, total: float | None, queue: float | None, inference: float | None,
                 per_token: float | None, path: str) -> None:
        self.total = total
        self.queue = queue
        self.inference = inference
        self.per_token = per_token
        self.path = path

    def usable(self) -> bool:
        return not (self.total is None and self.queue is None and self.inference is None and self.per_token is None)

    def output_tokens(self) -> int | None:
        """``round(inference / per_token)``, when both are known and the result is plausible."""
        if self.inference is None or not self.per_token:
            return None
        count = round(self.inference / self.per_token)
        return count if 1 <= count <= MAX_TOKENS else None


def _message(record: dict[Any, Any]) -> Any:
    message = record.get("message")
    if message is None:
        fields = record.get("fields")  # tracing-subscriber JSON without flatten_event
        if type(fields) is dict:
            message = fields.get("message")
    return message


def _timing_span(record: dict[Any, Any]) -> dict[Any, Any] | None:
    span = record.get("span")
    if type(span) is dict and "total_time" in span:
        return span
    spans = record.get("spans")
    if type(spans) is list:
        for candidate in reversed(spans[-_MAX_SPANS:]):
            if type(candidate) is dict and "total_time" in candidate:
                return candidate
    return None


def json_success(record: dict[Any, Any]) -> Timings | None:
    """The timings of a JSON ``Success`` event, or ``None`` if ``record`` is not one."""
    if _message(record) != "Success":
        return None
    span = _timing_span(record)
    if span is None:
        return None
    name = span.get("name")
    timings = Timings(
        duration_string(span.get("total_time")),
        duration_string(span.get("queue_time")),
        duration_string(span.get("inference_time")),
        duration_string(span.get("time_per_token")),
        SPAN_PATHS.get(name, "") if type(name) is str else "",
    )
    return timings if timings.usable() else None


def looks_like_plain_success(line: str) -> bool:
    """Whether a plain line may be a ``Success`` event (substring tests, no regex)."""
    return line.endswith("Success") and "total_time=" in line


def plain_success(line: str) -> Timings | None:
    """The timings of a plain-format ``Success`` line, or ``None``."""
    found: dict[str, float | None] = {}
    for match in _PLAIN_FIELD.finditer(line):
        found.setdefault(match.group(1), duration_string(match.group(2)))
    span = _PLAIN_SPAN.search(line)
    timings = Timings(
        found.get("total_time"),
        found.get("queue_time"),
        found.get("inference_time"),
        found.get("time_per_token"),
        SPAN_PATHS[span.group(1)] if span else "",
    )
    return timings if timings.usable() else None
