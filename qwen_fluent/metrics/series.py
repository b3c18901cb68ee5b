"""Per-label-set state of each family group.

One object per label set, found by one dict lookup of the label tuple. The
request label sets keep their numbers in a numpy table (:mod:`.table`); the
others (logs, vLLM gauges, prompts: a few per pod, updated now and then)
keep them in ``__slots__`` updated in place. Bucket counts are per bucket
(not cumulative); the exposition accumulates them at scrape time.

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
    """One label set of the request families: the counter, the histograms, the per-pod gauge inputs.

    Its numbers live in row ``row`` of the aggregator's
    :class:`~qwen_fluent.metrics.table.RequestTable` (numpy columns, so that a
    whole message updates in a few array operations); this object holds what
    is per label set and not a number: the key, the expiry group and epoch,
    and the exemplar slots of the histograms that carry them (``ex[j]`` for
    the j-th such histogram, one slot per bucket). ``block`` is the label
    block of the exposition, rendered once when first needed.
    """

    __slots__ = ("key", "group", "touched", "row", "ex", "block")

    def __init__(self, key: tuple[str, ...], group: tuple[str, ...], touched: int, row: int,
                 exemplar_widths: tuple[int, ...]) -> None:
        self.key = key
        self.group = group
        self.touched = touched
        self.row = row
        self.ex: list[list[ExemplarSlot]] = [[None] * w for w in exemplar_widths]
        self.block: str | None = None


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

    __slots__ = ("key", "group", "touched", "values", "stamps")

    def __init__(self, key: tuple[str, ...], group: tuple[str, ...], touched: int) -> None:
        self.key = key
        self.group = group
        self.touched = touched
        self.values: list[float | None] = [None] * len(ENGINE_FIELDS)
        #: When each value was last set (receive time): the newest wins when workers merge.
        self.stamps: list[float] = [0.0] * len(ENGINE_FIELDS)


class PromptSeries:
    """One label set of the system-prompt families: changes so far and the current hash."""

    __slots__ = ("key", "group", "touched", "changes", "prompt_hash", "stamp")

    def __init__(self, key: tuple[str, ...], group: tuple[str, ...], touched: int) -> None:
        self.key = key
        self.group = group
        self.touched = touched
        self.changes = 0
        self.prompt_hash = ""
        #: When the hash was last set (receive time): the newest wins when workers merge.
        self.stamp = 0.0
