"""The middleware's settings: arguments first, then ``QWEN_FLUENT_INSTRUMENT_*`` variables, then defaults.

vLLM builds a ``--middleware`` class with no arguments (``app.add_middleware(cls)``),
so every setting also has an environment variable; an explicit argument wins.
The output (stdout, a logger, a file) is resolved in :mod:`.output`, the GPU
memory probe in :mod:`.gpu`; this module holds the plain values and their bounds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import InstrumentConfigError

ENV_PREFIX = "QWEN_FLUENT_INSTRUMENT_"

#: The OpenAI routes that generate tokens; embeddings, models and health are not requests to time.
DEFAULT_PATHS = ("/v1/chat/completions", "/v1/completions")

#: Request bodies are copied (never held back) only up to this size to read ``model`` and
#: ``stream``: OpenAI chat bodies are a few KiB; a longer one (a long context, an image in
#: base64) is passed on untouched and those two fields come from the response instead.
#: Per concurrent request, so 64 KiB x 1,000 in-flight requests bounds the copies at 64 MiB.
DEFAULT_MAX_REQUEST_BODY = 64 * 1024

#: A non-streamed response body is copied whole up to this size for its ``usage``: a
#: completion of 32k tokens is ~130 KiB of JSON, so 1 MiB covers ``n`` > 1 and logprobs.
#: Beyond it only the first 4 KiB (``id``, ``model``) and the last 64 KiB (``usage``, which
#: OpenAI and vLLM put after ``choices``) are kept. The copy never delays the bytes.
DEFAULT_MAX_RESPONSE_BODY = 1024 * 1024

#: One SSE line (one ``data:`` event) longer than this is skipped, not buffered: a chunk
#: is a few hundred bytes, a few KiB with ``logprobs``; 256 KiB is far beyond both.
DEFAULT_MAX_EVENT_LINE = 256 * 1024

#: Longest ``request_id`` or ``model`` copied into a line (the receiver bounds labels at 256).
MAX_ID_LENGTH = 256

# Bounds on the settings themselves: below the minimum nothing useful fits, above the
# maximum one request could pin hundreds of MiB.
_MIN_BODY, _MAX_BODY = 1024, 64 * 1024 * 1024
_GPU_MODES = ("auto", "torch", "nvml", "off")


@dataclass(frozen=True)
class InstrumentConfig:
    """What :class:`~qwen_fluent.instrument.RequestLogMiddleware` logs and how much it may copy.

    ``paths`` are matched exactly against the request path (with the ASGI ``root_path``
    removed first). Header names are matched case-insensitively.
    """

    paths: tuple[str, ...] = DEFAULT_PATHS
    queue_header: str = "x-queue-time-ms"
    inference_header: str = "x-inference-time-ms"
    request_id_header: str = "x-request-id"
    gpu_memory: str = "auto"
    gpu_refresh_s: float = 5.0
    max_request_body: int = DEFAULT_MAX_REQUEST_BODY
    max_response_body: int = DEFAULT_MAX_RESPONSE_BODY
    max_event_line: int = DEFAULT_MAX_EVENT_LINE

    def __post_init__(self) -> None:
        if isinstance(self.paths, str) or not all(isinstance(p, str) and p.startswith("/") for p in self.paths):
            raise InstrumentConfigError(f"paths: a list of paths starting with '/', got {self.paths!r}")
        object.__setattr__(self, "paths", tuple(self.paths))
        for name in ("queue_header", "inference_header", "request_id_header"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or any(c.isspace() or c == ":" for c in value):
                raise InstrumentConfigError(f"{name}: an HTTP header name, got {value!r}")
            object.__setattr__(self, name, value.lower())
        if self.gpu_memory not in _GPU_MODES:
            raise InstrumentConfigError(f"gpu_memory: one of {', '.join(_GPU_MODES)}, got {self.gpu_memory!r}")
        if not isinstance(self.gpu_refresh_s, (int, float)) or not 0.0 <= self.gpu_refresh_s <= 3600.0:
            raise InstrumentConfigError(f"gpu_refresh_s: 0..3600 seconds, got {self.gpu_refresh_s!r}")
        for name in ("max_request_body", "max_response_body", "max_event_line"):
            value = getattr(self, name)
            if type(value) is not int or not _MIN_BODY <= value <= _MAX_BODY:
                raise InstrumentConfigError(f"{name}: {_MIN_BODY}..{_MAX_BODY} bytes, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> InstrumentConfig:
        """Defaults, replaced by ``QWEN_FLUENT_INSTRUMENT_<FIELD>`` variables, replaced by non-``None`` overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[field.name] = _parse(field.name, raw.strip())
        for name, value in overrides.items():
            if value is not None:
                values[name] = tuple(value) if name == "paths" and not isinstance(value, str) else value
        return replace(cls(), **values) if values else cls()


def _parse(name: str, raw: str) -> Any:
    variable = ENV_PREFIX + name.upper()
    if name == "paths":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name == "gpu_refresh_s":
        try:
            return float(raw)
        except ValueError:
            raise InstrumentConfigError(f"{variable}: a number of seconds, got {raw!r}") from None
    if name.startswith("max_"):
        try:
            return int(raw)
        except ValueError:
            raise InstrumentConfigError(f"{variable}: a number of bytes, got {raw!r}") from None
    return raw


def variables() -> Iterable[str]:
    """Every environment variable the configuration reads (for the docs and their test)."""
    return [ENV_PREFIX + field.name.upper() for field in fields(InstrumentConfig)] + [ENV_PREFIX + "OUTPUT"]
