"""What the record normaliser produces from one Forward record.

:func:`qwen_fluent.records.normalise` maps every record to exactly one of
these. They carry values already in base units (seconds, bytes, tokens), so
the aggregator only adds and buckets. Optional fields are ``None`` when the
log did not carry them (never 0: a missing queue time is not a zero queue time).
"""

from __future__ import annotations

from typing import NamedTuple


class Source(NamedTuple):
    """Where a record came from: the Kubernetes metadata Fluent Bit attached.

    Empty strings where unknown. ``labels`` are the pod's labels, kept so that
    configuration can pick a label (for example ``model``) as a metric label.
    """

    namespace: str = ""
    pod: str = ""
    container: str = ""
    host: str = ""
    labels: dict[str, str] | None = None


NO_SOURCE = Source()


class RequestEvent(NamedTuple):
    """One finished inference request.

    ``status`` is one of :data:`STATUSES`. Durations are seconds, memory bytes.
    """

    status: str
    path: str
    model: str
    request_id: str
    method: str
    input_tokens: int | None
    output_tokens: int | None
    total_s: float | None
    queue_s: float | None
    inference_s: float | None
    ttft_s: float | None
    tpot_s: float | None
    gpu_memory_bytes: float | None
    http_status: int | None
    error_type: str
    timestamp: float | None
    source: Source


class LogEvent(NamedTuple):
    """A log line that is not a request: counted by ``level`` (one of :data:`LEVELS`)."""

    level: str
    source: Source


class EngineStats(NamedTuple):
    """vLLM's periodic engine stats line, as gauges. ``None`` where the line lacked a field.

    ``engine`` is the engine index vLLM prints (``Engine 001:`` gives ``"1"``):
    a data-parallel vLLM (v1 engine) prints one line per engine from the same
    pod, so the index tells their gauges apart. Empty for the v0 line, which
    has none. It comes last, with a default, so that existing positional
    constructions keep their meaning.
    """

    prompt_throughput: float | None  # tokens/s
    generation_throughput: float | None  # tokens/s
    running: float | None  # requests
    waiting: float | None  # requests (also "Pending")
    swapped: float | None  # requests
    gpu_kv_cache_usage: float | None  # ratio 0..1
    cpu_kv_cache_usage: float | None  # ratio 0..1
    prefix_cache_hit_rate: float | None  # ratio 0..1
    model: str
    source: Source
    engine: str = ""  # the engine index vLLM prints, e.g. "0"; empty for the v0 line that has none


class PromptChange(NamedTuple):
    """A system-prompt change: only its hash travels on, never its text."""

    prompt_hash: str
    model: str
    source: Source


class Unrecognised(NamedTuple):
    """A record that is none of the above; ``reason`` is a short fixed label value."""

    reason: str
    source: Source


Outcome = RequestEvent | LogEvent | EngineStats | PromptChange | Unrecognised

#: The fixed set request statuses are folded into (documented in docs/metrics.md).
STATUSES = ("success", "error", "client_error", "timeout", "cancelled", "unknown")

#: The fixed set log levels are folded into.
LEVELS = ("debug", "info", "warning", "error", "critical", "unknown")
