"""The LLM metric families: :class:`LLMMetrics` aggregates outcomes and exposes them.

Design (measured in ``bench/bench_metrics.py``): per record, the hot path
builds the label tuple with two C-level ``itemgetter`` calls, finds the
series with one dict lookup, and updates plain slots in place: for each
histogram a ``bisect`` and a list-element increment. Label caps are checked
only when a label tuple is seen for the first time (or is one that folds).
prometheus-client's ``Counter``/``Histogram`` objects would cost a lock and a
``labels()`` lookup per family per record, several times more; instead this
class is itself a prometheus-client custom collector that builds metric
families from a snapshot at scrape time.

Threads: :meth:`observe` and :meth:`expire` mutate and must be called from
one thread (the receiver's event loop). :meth:`collect` only reads (a
``list()`` of each dict, atomic under the GIL) and may run in the HTTP
server's thread; a scrape that lands mid-record may see a histogram's sum one
observation behind its buckets, never a count that goes backwards.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from ..records.events import (
    STATUSES,
    EngineStats,
    LogEvent,
    PromptChange,
    RequestEvent,
    Source,
    Unrecognised,
)
from ..records.reasons import UNRECOGNISED_REASONS
from .config import REQUEST_LABELS, SOURCE_LABELS, MetricsConfig
from .labels import MAX_SERIES, LabelSpace
from .series import ENGINE_FIELDS, EngineSeries, LogSeries, PromptSeries, RequestSeries

#: OpenMetrics caps an exemplar's label set at 128 UTF-8 characters, names
#: and values together; ``request_id`` (10) leaves 118 for the value.
EXEMPLAR_ID_LENGTH = 128 - len("request_id")

#: Distinct ``Unrecognised.reason`` values counted before the rest fold into
#: the overflow value. The normaliser's set is fixed (9 today); 32 guards the
#: counter against a producer that puts free text there.
MAX_UNRECOGNISED_REASONS = 32

#: vLLM gauge family name suffix, help and OpenMetrics unit, per EngineStats field.
ENGINE_FAMILIES = {
    "prompt_throughput": ("vllm_prompt_throughput_tokens_per_second",
                          "Prompt (prefill) throughput vLLM last reported, tokens per second.", ""),
    "generation_throughput": ("vllm_generation_throughput_tokens_per_second",
                              "Generation (decode) throughput vLLM last reported, tokens per second.", ""),
    "running": ("vllm_running_requests", "Requests vLLM last reported running.", ""),
    "waiting": ("vllm_waiting_requests", "Requests vLLM last reported waiting (pending).", ""),
    "swapped": ("vllm_swapped_requests", "Requests vLLM last reported swapped to CPU.", ""),
    "gpu_kv_cache_usage": ("vllm_gpu_kv_cache_usage_ratio", "GPU KV-cache usage vLLM last reported, 0..1.", "ratio"),
    "cpu_kv_cache_usage": ("vllm_cpu_kv_cache_usage_ratio", "CPU KV-cache usage vLLM last reported, 0..1.", "ratio"),
    "prefix_cache_hit_rate": ("vllm_prefix_cache_hit_ratio", "Prefix-cache hit rate vLLM last reported, 0..1.", "ratio"),
}
assert tuple(ENGINE_FAMILIES) == ENGINE_FIELDS

#: Family groups, as the ``group`` label of ``qwen_fluent_label_sets``.
GROUPS = ("requests", "logs", "vllm", "prompts")


def _tuple_getter(indices: list[int]) -> Callable[[Any], tuple[Any, ...]]:
    """A C-speed ``obj -> tuple(obj[i] for i in indices)``, a tuple even for 0 or 1 index."""
    if not indices:
        return lambda obj: ()
    if len(indices) == 1:
        (i,) = indices
        return lambda obj: (obj[i],)
    return itemgetter(*indices)


def _les(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(floatToGoString(b) for b in bounds) + ("+Inf",)


class LLMMetrics:
    """Aggregates normalised outcomes into the ``<namespace>_*`` families.

    It is a prometheus-client collector (``registry.register(metrics)``).
    Besides the LLM families it exposes the receiver-side counters that only
    it can know: ``qwen_fluent_label_overflow_total{label}``,
    ``qwen_fluent_series_expired_total``,
    ``qwen_fluent_unrecognised_records_total{reason}`` and
    ``qwen_fluent_label_sets{group}``.
    """

    def __init__(self, config: MetricsConfig | None = None) -> None:
        cfg = config if config is not None else MetricsConfig()
        self.config = cfg
        self._space = LabelSpace(cfg)
        ns = cfg.namespace
        self._ns = ns

        # Label names per family group. Request labels first, then the
        # Kubernetes ones (the expiry group), then pod labels.
        req = tuple(name for name in cfg.labels if name in REQUEST_LABELS)
        src = tuple(name for name in cfg.labels if name in SOURCE_LABELS)
        pod = tuple(cfg.pod_labels)
        self._group_names = src + pod
        self._req_names = req + src + pod
        self._req_split = len(req)
        self._log_names = ("level",) + src + pod
        model = ("model",) if "model" in cfg.labels else ()
        self._pod_names = model + src + pod  # prompt, GPU-memory, last-request
        self._pod_split = len(model)
        # vLLM gauges: one label set per engine of a data-parallel vLLM, so
        # the engines of one pod do not overwrite each other. ``engine``
        # comes before the Kubernetes labels: the key's tail stays the
        # expiry group.
        self._engine_names = model + ("engine",) + src + pod
        self._engine_split = len(model) + 1
        # Where the per-pod gauges' labels sit in a request key.
        self._req_to_pod = [self._req_names.index("model")] if model else []
        self._req_to_pod += list(range(len(req), len(self._req_names)))
        self._status_at = self._req_names.index("status") if "status" in req else -1

        # Key builders: C-level tuple getters over the NamedTuples.
        self._req_key = _tuple_getter([RequestEvent._fields.index(n) for n in req])
        src_get = _tuple_getter([Source._fields.index(n) for n in src])
        if pod:
            keys = tuple(cfg.pod_labels.values())

            def src_key(source: Source) -> tuple[Any, ...]:
                labels = source.labels or {}
                return src_get(source) + tuple(labels.get(k, "") for k in keys)

            self._src_key: Callable[[Source], tuple[Any, ...]] = src_key
        else:
            self._src_key = src_get
        self._model_key: Callable[[str], tuple[str, ...]] = (lambda m: (m,)) if model else (lambda m: ())
        # (model, engine) or (engine,): one tuple per stats line, no branch.
        self._engine_key: Callable[[EngineStats], tuple[str, ...]] = (
            itemgetter(EngineStats._fields.index("model"), EngineStats._fields.index("engine")) if model
            else _tuple_getter([EngineStats._fields.index("engine")]))

        self._dur = cfg.duration_buckets
        self._ttft = cfg.ttft_buckets
        self._tpot = cfg.tpot_buckets
        self._itok = cfg.input_token_buckets
        self._otok = cfg.output_token_buckets
        self._sizes = (len(self._dur), len(self._ttft), len(self._tpot), len(self._itok), len(self._otok))
        self._exemplars = cfg.exemplars
        self._max_series = cfg.max_series
        self._overflow = cfg.overflow_value

        self._requests: dict[tuple[Any, ...], RequestSeries] = {}
        self._logs: dict[tuple[Any, ...], LogSeries] = {}
        self._engines: dict[tuple[Any, ...], EngineSeries] = {}
        self._prompts: dict[tuple[Any, ...], PromptSeries] = {}

        #: Records by ``Unrecognised.reason``; the known reasons start at 0.
        self.unrecognised: Counter[str] = Counter({r: 0 for r in UNRECOGNISED_REASONS})
        #: Label sets removed by :meth:`expire`, all groups together.
        self.expired = 0
        self._reports = 0  # GPU-memory reports so far
        # Expiry epochs: series store the epoch of their last update (an int
        # store, no clock read per record); expire() closes the current epoch
        # at ``now`` and remembers when each epoch ended.
        self._epoch = 0
        self._epoch_ends: dict[int, float] = {}

    # -- the hot path ---------------------------------------------------------

    def observe(self, outcome: Any) -> None:
        """Count one normalised outcome. Never raises for any outcome the normaliser makes."""
        if type(outcome) is RequestEvent:
            key = self._req_key(outcome) + self._src_key(outcome.source)
            s = self._requests.get(key)
            if s is None:
                s = self._admit_request(key)
            s.touched = self._epoch
            s.requests += 1
            ts = outcome.timestamp
            if ts is None:
                ts = time.time()
            if ts > s.last_ts:
                s.last_ts = ts
            v = outcome.total_s
            if v is not None:
                i = bisect_left(self._dur, v)
                s.d_counts[i] += 1
                s.d_sum += v
                if self._exemplars and outcome.request_id:
                    s.d_ex[i] = (outcome.request_id, v, ts)
            v = outcome.queue_s
            if v is not None:
                s.q_counts[bisect_left(self._dur, v)] += 1
                s.q_sum += v
            v = outcome.inference_s
            if v is not None:
                i = bisect_left(self._dur, v)
                s.i_counts[i] += 1
                s.i_sum += v
                if self._exemplars and outcome.request_id:
                    s.i_ex[i] = (outcome.request_id, v, ts)
            v = outcome.ttft_s
            if v is not None:
                s.f_counts[bisect_left(self._ttft, v)] += 1
                s.f_sum += v
            v = outcome.tpot_s
            if v is not None:
                s.p_counts[bisect_left(self._tpot, v)] += 1
                s.p_sum += v
            v = outcome.input_tokens
            if v is not None:
                s.it_counts[bisect_left(self._itok, v)] += 1
                s.it_sum += v
            v = outcome.output_tokens
            if v is not None:
                s.ot_counts[bisect_left(self._otok, v)] += 1
                s.ot_sum += v
            v = outcome.gpu_memory_bytes
            if v is not None and ts >= s.gpu_ts:  # the newest report wins, ties by arrival
                s.gpu = v
                s.gpu_ts = ts
                self._reports += 1  # arrival order breaks timestamp ties across label sets
                s.gpu_seq = self._reports
        elif type(outcome) is LogEvent:
            key = (outcome.level,) + self._src_key(outcome.source)
            log = self._logs.get(key)
            if log is None:
                log = self._admit(self._logs, self._log_names, 1, key, LogSeries)
            log.touched = self._epoch
            log.count += 1
        elif type(outcome) is EngineStats:
            key = self._engine_key(outcome) + self._src_key(outcome.source)
            eng = self._engines.get(key)
            if eng is None:
                eng = self._admit(self._engines, self._engine_names, self._engine_split, key, EngineSeries)
            eng.touched = self._epoch
            values = eng.values
            for i, v in enumerate(outcome[: len(ENGINE_FIELDS)]):
                if v is not None:
                    values[i] = v
        elif type(outcome) is PromptChange:
            key = self._model_key(outcome.model) + self._src_key(outcome.source)
            p = self._prompts.get(key)
            if p is None:
                p = self._admit(self._prompts, self._pod_names, self._pod_split, key, PromptSeries)
            p.touched = self._epoch
            p.changes += 1
            p.prompt_hash = outcome.prompt_hash
        elif type(outcome) is Unrecognised:
            reasons = self.unrecognised
            reason = outcome.reason
            if reason in reasons or len(reasons) < MAX_UNRECOGNISED_REASONS:
                reasons[reason] += 1
            else:
                reasons[self._overflow] += 1
        else:
            raise TypeError(f"not a normalised outcome: {type(outcome).__name__}")

    # -- the slow path: a label tuple not seen before -------------------------

    def _fold(self, store: dict[tuple[Any, ...], Any], names: tuple[str, ...], raw: tuple[Any, ...]) -> tuple[str, ...]:
        key = self._space.fold(names, raw)
        if key not in store and len(store) >= self._max_series:
            key = (self._overflow,) * len(names)
            self._space.overflow[MAX_SERIES] += 1
        return key

    def _admit_request(self, raw: tuple[Any, ...]) -> RequestSeries:
        key = self._fold(self._requests, self._req_names, raw)
        s = self._requests.get(key)
        if s is None:
            s = RequestSeries(key, key[self._req_split:], self._epoch, self._sizes)
            self._requests[key] = s
            self._space.hold(self._req_names, key)
        return s

    def _admit(self, store: dict[tuple[Any, ...], Any], names: tuple[str, ...], split: int,
               raw: tuple[Any, ...], factory: Callable[[tuple[str, ...], tuple[str, ...], int], Any]) -> Any:
        key = self._fold(store, names, raw)
        s = store.get(key)
        if s is None:
            s = factory(key, key[split:], self._epoch)
            store[key] = s
            self._space.hold(names, key)
        return s

    # -- expiry -----------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Remove the series of every pod that has sent nothing for ``series_idle_seconds``.

        The unit of expiry is the Kubernetes part of the label set
        (namespace, pod, container, host and pod labels, as configured): a pod
        whose requests, logs, engine stats or prompt changes keep coming keeps
        all its series, including a status it has not repeated lately, so its
        counters never restart while it lives. ``now`` is any clock, the same
        one on every call (default ``time.time()``). Precision is the interval
        between calls: a series is removed at the first call at least
        ``series_idle_seconds`` after the call that preceded its last update.
        Returns the number of label sets removed. Call from the thread that
        calls :meth:`observe`.
        """
        if now is None:
            now = time.time()
        ends = self._epoch_ends
        ends[self._epoch] = now
        self._epoch += 1
        idle = self.config.series_idle_seconds
        if idle <= 0:
            ends.clear()
            return 0
        cutoff = now - idle
        stores: tuple[tuple[dict[tuple[Any, ...], Any], tuple[str, ...]], ...] = (
            (self._requests, self._req_names),
            (self._logs, self._log_names),
            (self._engines, self._engine_names),
            (self._prompts, self._pod_names),
        )
        latest: dict[tuple[str, ...], int] = {}
        for store, _ in stores:
            for s in list(store.values()):
                if latest.get(s.group, -1) < s.touched:
                    latest[s.group] = s.touched
        dead = {g for g, epoch in latest.items() if ends.get(epoch, math.inf) <= cutoff}
        removed = 0
        if dead:
            for store, names in stores:
                for key, s in list(store.items()):
                    if s.group in dead:
                        del store[key]
                        self._space.release(names, key)
                        removed += 1
        # No surviving group's latest epoch ended before the cutoff, so these
        # are no longer needed.
        for epoch in [e for e, end in ends.items() if end <= cutoff]:
            del ends[epoch]
        self.expired += removed
        return removed

    # -- the collector -----------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's duplicate-name check)."""
        return self._families((), (), (), ())

    def collect(self) -> Iterator[Metric]:
        """Build every family from a snapshot of the series."""
        return self._families(
            list(self._requests.values()),
            list(self._logs.values()),
            list(self._engines.values()),
            list(self._prompts.values()),
        )

    def _families(self, requests: Iterable[RequestSeries], logs: Iterable[LogSeries],
                  engines: Iterable[EngineSeries], prompts: Iterable[PromptSeries]) -> Iterator[Metric]:
        ns = self._ns
        names = self._req_names
        rows = [(dict(zip(names, s.key)), s) for s in requests]

        total = CounterMetricFamily(
            f"{ns}_requests_total",
            "Inference requests finished, by status (error and timeout are server-side failures; "
            "client_error and cancelled are not).",
            labels=names)
        sample_name = total.name + "_total"
        for labels, s in rows:
            total.samples.append(Sample(sample_name, labels, s.requests))
        if self.config.zero_fill_statuses and self._status_at >= 0:
            at = self._status_at
            seen: dict[tuple[str, ...], set[str]] = {}
            for _, s in rows:
                if s.key[at] != self._overflow:  # a folded label set is not a status's home
                    seen.setdefault(s.key[:at] + s.key[at + 1:], set()).add(s.key[at])
            for rest, statuses in seen.items():
                for status in STATUSES:
                    if status not in statuses:
                        key = rest[:at] + (status,) + rest[at:]
                        total.add_metric(key, 0)
        yield total

        ex = self._exemplars
        yield self._histogram(f"{ns}_request_duration_seconds",
                              "End-to-end request duration as the server logged it (total_time).",
                              self._dur, [(lb, s.d_counts, s.d_sum, s.d_ex if ex else None) for lb, s in rows])
        yield self._histogram(f"{ns}_request_queue_duration_seconds",
                              "Time requests waited in the server's queue before inference started.",
                              self._dur, [(lb, s.q_counts, s.q_sum, None) for lb, s in rows])
        yield self._histogram(f"{ns}_request_inference_duration_seconds",
                              "Time requests spent in inference (prefill and decode).",
                              self._dur, [(lb, s.i_counts, s.i_sum, s.i_ex if ex else None) for lb, s in rows])
        yield self._histogram(f"{ns}_time_to_first_token_seconds",
                              "Time from request arrival to its first output token.",
                              self._ttft, [(lb, s.f_counts, s.f_sum, None) for lb, s in rows])
        yield self._histogram(f"{ns}_time_per_output_token_seconds",
                              "Time per output token: as logged, else (total - ttft) / (output_tokens - 1), else inference / output_tokens.",
                              self._tpot, [(lb, s.p_counts, s.p_sum, None) for lb, s in rows])
        yield self._histogram(f"{ns}_request_input_tokens", "Prompt (input) tokens per request.",
                              self._itok, [(lb, s.it_counts, s.it_sum, None) for lb, s in rows], unit="")
        yield self._histogram(f"{ns}_request_output_tokens", "Generated (output) tokens per request.",
                              self._otok, [(lb, s.ot_counts, s.ot_sum, None) for lb, s in rows], unit="")
        for name, doc, attr in (
            (f"{ns}_input_tokens_total", "Prompt (input) tokens of finished requests; rate() gives tokens/s.", "it_sum"),
            (f"{ns}_output_tokens_total", "Generated (output) tokens of finished requests; rate() gives tokens/s.",
             "ot_sum"),
        ):
            fam = CounterMetricFamily(name, doc, labels=names)
            for labels, s in rows:
                fam.samples.append(Sample(fam.name + "_total", labels, getattr(s, attr)))
            yield fam

        # Per-pod gauges, grouped from the request label sets.
        pick = self._req_to_pod
        last: dict[tuple[str, ...], float] = {}
        gpu: dict[tuple[str, ...], tuple[float, int, float]] = {}
        for _, s in rows:
            key = tuple(s.key[i] for i in pick)
            if s.last_ts > last.get(key, -math.inf):
                last[key] = s.last_ts
            value = s.gpu
            if value is not None:
                report = (s.gpu_ts, s.gpu_seq, value)
                if report > gpu.get(key, (-math.inf, 0, 0.0)):
                    gpu[key] = report
        pod_names = self._pod_names
        fam = GaugeMetricFamily(f"{ns}_gpu_memory_reported_bytes",
                                "GPU memory the inference server last reported in a request log, bytes.",
                                labels=pod_names, unit="bytes")
        for key, (_, _, value) in gpu.items():
            fam.add_metric(key, value)
        yield fam
        fam = GaugeMetricFamily(f"{ns}_last_request_timestamp_seconds",
                                "Timestamp of the newest request log line, seconds since the epoch.",
                                labels=pod_names, unit="seconds")
        for key, value in last.items():
            if value > -math.inf:
                fam.add_metric(key, value)
        yield fam

        logs_fam = CounterMetricFamily(f"{ns}_log_messages_total",
                                       "Log lines that are not requests, by level.", labels=self._log_names)
        for s in logs:
            logs_fam.add_metric(s.key, s.count)
        yield logs_fam

        engine_rows = [(s.key, list(s.values)) for s in engines]
        for i, (suffix, doc, unit) in enumerate(ENGINE_FAMILIES.values()):
            fam = GaugeMetricFamily(f"{ns}_{suffix}", doc, labels=self._engine_names, unit=unit)
            for key, values in engine_rows:
                if values[i] is not None:
                    fam.add_metric(key, values[i])
            yield fam

        prompt_rows = [(s.key, s.changes, s.prompt_hash) for s in prompts]
        fam = CounterMetricFamily(f"{ns}_system_prompt_changes_total",
                                  "System-prompt changes announced in the logs.", labels=pod_names)
        for key, changes, _ in prompt_rows:
            fam.add_metric(key, changes)
        yield fam
        info = InfoMetricFamily(f"{ns}_system_prompt",
                                "The current system prompt's hash (never its text); value 1.", labels=pod_names)
        for key, _, digest in prompt_rows:
            info.add_metric(key, {"prompt_hash": digest})
        yield info

        yield from self._own_families()

    def _own_families(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("qwen_fluent_label_overflow_total",
                                  "Records whose label value was folded into the overflow value, by label "
                                  "(max_series: the whole label set, the family group being full).",
                                  labels=("label",))
        counts = dict.fromkeys(self._req_names + ("level", "engine", MAX_SERIES), 0)
        counts.update(self._space.overflow)
        for label, n in counts.items():
            fam.add_metric((label,), n)
        yield fam
        yield CounterMetricFamily("qwen_fluent_series_expired_total",
                                  "Label sets removed because their pod sent nothing for series_idle_seconds.",
                                  value=self.expired)
        fam = CounterMetricFamily("qwen_fluent_unrecognised_records_total",
                                  "Records the normaliser could not classify, by reason.", labels=("reason",))
        for reason, n in list(self.unrecognised.items()):
            fam.add_metric((reason,), n)
        yield fam
        fam = GaugeMetricFamily("qwen_fluent_label_sets",
                                "Label sets alive per family group; each group is capped at max_series.",
                                labels=("group",))
        for group, store in zip(GROUPS, (self._requests, self._logs, self._engines, self._prompts)):
            fam.add_metric((group,), len(store))
        yield fam

    def _histogram(self, name: str, doc: str, bounds: tuple[float, ...],
                   rows: list[tuple[dict[str, str], list[int], float, list[Any] | None]],
                   unit: str = "seconds") -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=self._req_names, unit=unit)
        les = _les(bounds)
        bucket, count, total = name + "_bucket", name + "_count", name + "_sum"
        append = fam.samples.append
        for labels, counts, sum_, exemplars in rows:
            counts = list(counts)  # one snapshot: the buckets and the count agree
            exemplars = list(exemplars) if exemplars is not None else None
            acc = 0
            for j, le in enumerate(les):
                acc += counts[j]
                exemplar = None
                if exemplars is not None:
                    slot = exemplars[j]
                    if slot is not None:
                        rid, value, ts = slot
                        exemplar = Exemplar({"request_id": rid[:EXEMPLAR_ID_LENGTH]}, value, ts)
                append(Sample(bucket, {**labels, "le": le}, acc, None, exemplar))
            append(Sample(count, labels, acc))
            append(Sample(total, labels, sum_))
        return fam
