"""Per-label-set state of each family group: plain slots updated in place.

One object per label set, found by one dict lookup of the label tuple. The
hot path writes integers and floats into ``__slots__`` and increments one
element of a bucket-count list; nothing here allocates per record except an
exemplar tuple. Bucket counts are per bucket (not cumulative); the collector
accumulates them at scrape time.

Every object carries ``key`` (its folded label values, for the exposition and
for releasing them on expiry), ``group`` (the Kubernetes part of the key: the
unit of expiry) and ``touched`` (the expiry epoch of its last update; see
:meth:`~qwen_fluent.metrics.llm.LLMMetrics.expire`).
"""

from __future__ import annotations

from typing import Optional

#: One exemplar: (request_id, observed value, timestamp or None).
ExemplarSlot = Optional[tuple[str, float, Optional[float]]]


class RequestSeries:
    """One label set of the request families: a counter and seven histograms.

    Histograms, by slot prefix: ``d`` end-to-end, ``q`` queue, ``i``
    inference, ``f`` time to first token, ``p`` time per output token, ``it``
    input tokens, ``ot`` output tokens. The token counters
    (``input_tokens_total``...) are the token histograms' sums. ``last_ts``
    (newest record timestamp) and ``gpu``/``gpu_ts``/``gpu_seq`` (last
    reported GPU memory, its timestamp and arrival number) feed the per-pod gauges, which are grouped at scrape
    time rather than kept per record.
    """

    __slots__ = (
        "key", "group", "touched", "requests",
        "d_counts", "d_sum", "d_ex",
        "q_counts", "q_sum",
        "i_counts", "i_sum", "i_ex",
        "f_counts", "f_sum",
        "p_counts", "p_sum",
        "it_counts", "it_sum",
        "ot_counts", "ot_sum",
        "last_ts", "gpu", "gpu_ts", "gpu_seq",
    )

    def __init__(self, key: tuple[str, ...], group: tuple[str, ...], touched: int,
                 sizes: tuple[int, int, int, int, int]) -> None:
        dur, ttft, tpot, itok, otok = sizes
        self.key = key
        self.group = group
        self.touched = touched
        self.requests = 0
        self.d_counts = [0] * (dur + 1)
        self.d_sum = 0.0
        self.d_ex: list[ExemplarSlot] = [None] * (dur + 1)
        self.q_counts = [0] * (dur + 1)
        self.q_sum = 0.0
        self.i_counts = [0] * (dur + 1)
        self.i_sum = 0.0
        self.i_ex: list[ExemplarSlot] = [None] * (dur + 1)
        self.f_counts = [0] * (ttft + 1)
        self.f_sum = 0.0
        self.p_counts = [0] * (tpot + 1)
        self.p_sum = 0.0
        self.it_counts = [0] * (itok + 1)
        self.it_sum = 0  # int: token totals stay exact
        self.ot_counts = [0] * (otok + 1)
        self.ot_sum = 0
        self.last_ts = float("-inf")
        self.gpu: float | None = None
        self.gpu_ts = float("-inf")
        self.gpu_seq = 0


class LogSeries:
    """One label set of ``log_messages_total`` (level + Kubernetes labels)."""

    __slots__ = ("key", "group", "touched", "count")

    def __init__(self, key: tuple[str, ...], group: tuple[str, ...], touched: int) -> None:
        self.key = key
        self.group = group
        self.touched = touched
        self.count = 0


#: EngineStats fields, in order, that become vLLM gauges.
ENGINE_FIELDS = (
    "prompt_throughput",
    "generation_throughput",
    "running",
    "waiting",
    "swapped",
    "gpu_kv_cache_usage",
    "cpu_kv_cache_usage",
    "prefix_cache_hit_rate",
)


class EngineSeries:
    """One label set of the vLLM gauges: the last value of each field, or ``None``.

    A stats line that lacks a field keeps the previous value (vLLM prints
    prefix-cache rates only when prefix caching is on).
    """

    __slots__ = ("key", "group", "touched", "values")

    def __init__(self, key: tuple[str, ...], group: tuple[str, ...], touched: int) -> None:
        self.key = key
        self.group = group
        self.touched = touched
        self.values: list[float | None] = [None] * len(ENGINE_FIELDS)


class PromptSeries:
    """One label set of the system-prompt families: changes so far and the current hash."""

    __slots__ = ("key", "group", "touched", "changes", "prompt_hash")

    def __init__(self, key: tuple[str, ...], group: tuple[str, ...], touched: int) -> None:
        self.key = key
        self.group = group
        self.touched = touched
        self.changes = 0
        self.prompt_hash = ""
