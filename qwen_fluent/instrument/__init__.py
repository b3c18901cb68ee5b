"""The first hop of the chain: per-request JSON lines written inside the inference server.

No common OpenAI-compatible server logs one structured line per request (vLLM logs
periodic engine stats; TGI's ``Success`` line has no token counts), so this package
gives them one. :class:`RequestLogMiddleware` is a pure ASGI 3 middleware (no
Starlette or FastAPI import) that writes, for every request to the generation routes,
the line the receiver's normaliser reads with no configuration::

    {"timestamp": "2026-12-06T19:48:29.123Z", "request_id": "chatcmpl-9f2c", "method": "POST",
     "path": "/v1/chat/completions", "model": "qwen2.5-7b", "stream": true, "input_tokens": 1240,
     "output_tokens": 320, "tokens_estimated": false, "total_time_ms": 1876.4,
     "time_to_first_token_ms": 210.7, "gpu_memory_mb": 18432.0, "status": "success", "http_status": 200}

It sits on the bottom floor: it imports nothing else of qwen_fluent, so an inference
server loads it without the receiver. The pieces: :mod:`.config` (settings, limits,
``QWEN_FLUENT_INSTRUMENT_*``), :mod:`.parse` (bounded sans-IO readers of the bodies),
:mod:`.gpu` (torch / NVML memory), :mod:`.output` (stdout, logger, file). See
docs/instrument.md.
"""

from qwen_fluent.instrument.config import InstrumentConfig
from qwen_fluent.instrument.errors import InstrumentConfigError, InstrumentError
from qwen_fluent.instrument.gpu import GpuMemoryProbe
from qwen_fluent.instrument.middleware import RequestLogMiddleware, status_of

__all__ = [
    "GpuMemoryProbe",
    "InstrumentConfig",
    "InstrumentConfigError",
    "InstrumentError",
    "RequestLogMiddleware",
    "status_of",
]
