"""The collector side of the LLM families: one :class:`Snapshot` in, families or exposition out.

:class:`~qwen_fluent.metrics.llm.LLMMetrics` aggregates (the hot path) and
takes a consistent :class:`Snapshot` under its lock; :class:`SnapshotCollector`,
which it inherits, turns a snapshot into the families. Two ways out, one
content: :meth:`SnapshotCollector.collect` builds prometheus-client families
(prometheus-client's collector protocol), :meth:`SnapshotCollector.expose`
writes the exposition straight into an :class:`~qwen_fluent.metrics.exposition.Writer`
from label blocks built once per series, which is what /metrics uses
(``tests/metrics/test_exposition.py`` holds the two to the same bytes). A
snapshot need not be the receiver's own: ``serve --workers N`` exposes the
merge of its workers' snapshots (:mod:`.merge`) through an idle LLMMetrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from ..records.events import STATUSES
from .exposition import Writer, escape_label_value, label_block
from .families import REQUEST_COUNTERS, REQUESTS_HELP
from .labels import MAX_SERIES
from .series import ENGINE_FIELDS, RequestSeries
from .table import RequestTable

#: OpenMetrics caps an exemplar's label set at 128 UTF-8 characters, names
#: and values together; ``request_id`` (10) leaves 118 for the value.
EXEMPLAR_ID_LENGTH = 128 - len("request_id")

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

def _les(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(floatToGoString(b) for b in bounds) + ("+Inf",)


#: The per-pod gauges grouped from the request label sets, in the order :meth:`SnapshotCollector.pod_gauges`
#: returns their values: name after the namespace, help, OpenMetrics unit.
POD_GAUGES = (
    ("gpu_memory_reported_bytes", "GPU memory the inference server last reported in a request log, bytes.", "bytes"),
    ("last_request_timestamp_seconds", "Timestamp of the newest request log line, seconds since the epoch.",
     "seconds"),
)


class Snapshot(NamedTuple):
    """What one scrape exposes, copied under the lock: request series with their exemplar slots,
    log, engine and prompt rows, the request table's arrays, unrecognised counts."""

    requests: list[tuple[RequestSeries, tuple[str, ...], list[list[Any]]]]
    logs: list[tuple[tuple[str, ...], int]]
    engines: list[tuple[tuple[str, ...], list[float | None]]]
    prompts: list[tuple[tuple[str, ...], int, str]]
    table: RequestTable
    unrecognised: dict[str, int]
    #: Per request group: its series rows and its table (the first is ``requests``/``table``).
    groups: list[tuple[list[tuple[RequestSeries, tuple[str, ...], list[list[Any]]]], RequestTable]] = []
    #: Records folded per label (label_overflow_total), label sets expired so far.
    overflow: dict[str, int] = {}
    expired: int = 0
    #: Per engine label set, when each gauge value was set; per prompt label set, when its hash was.
    engine_stamps: list[list[float]] = []
    prompt_stamps: list[float] = []


class SnapshotCollector:
    """Families of a :class:`Snapshot`; a mixin of :class:`~qwen_fluent.metrics.llm.LLMMetrics`.

    It reads, and only reads, what the aggregator defines: ``snapshot()``,
    ``groups`` (the request groups), ``histograms`` and ``_hist_at`` (the spec
    table and where each histogram lives), ``_bounds``, ``_exemplars``,
    ``_ns`` and the label names of each family group.
    """

    groups: list[Any]
    histograms: tuple[Any, ...]
    config: Any
    _hist_at: dict[int, tuple[int, int]]
    _bounds: list[tuple[float, ...]]
    _exemplars: bool
    _ns: str
    _req_names: tuple[str, ...]
    _log_names: tuple[str, ...]
    _engine_names: tuple[str, ...]
    _pod_names: tuple[str, ...]
    _req_to_pod: list[int]
    _status_at: int
    _overflow: str

    def snapshot(self, empty: bool = False) -> Snapshot:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's duplicate-name check)."""
        return self._families(self.snapshot(empty=True))

    def collect(self) -> Iterator[Metric]:
        """Build every family from a snapshot of the series (prometheus-client's collector protocol)."""
        return self._families(self.snapshot())

    def expose(self, writer: Writer) -> None:
        """Write every family straight into ``writer`` (:mod:`.exposition`), as :meth:`collect` describes them.

        The fast path of /metrics: each request label set's label block is
        built once, when first exposed, and kept on the series; a scrape only
        formats numbers. The output is what prometheus-client writes for
        :meth:`collect`'s families (``tests/metrics/test_exposition.py``).
        """
        self.expose_snapshot(writer, self.snapshot())

    def expose_snapshot(self, writer: Writer, snap: Snapshot) -> None:
        """:meth:`expose` of a given snapshot (one of this receiver's, or several workers' merged)."""
        ns = self._ns
        rows_of = []
        for group, (series, _) in zip(self.groups, snap.groups):
            rows = []
            for s, key, ex in series:
                block = s.block
                if block is None:
                    block = s.block = label_block(group.names, key)
                rows.append((block, s.row, ex))
            rows_of.append(rows)
        rows, t = rows_of[0], snap.table

        writer.family(f"{ns}_requests_total", "counter", REQUESTS_HELP)
        requests = t.requests.tolist()
        for block, row, _ in rows:
            writer.counter(block, requests[row])
        for key in self.zero_filled(snap):
            writer.counter(label_block(self._req_names, key), 0)

        for h, spec in enumerate(self.histograms):
            g, j = self._hist_at[h]
            gt = snap.groups[g][1]
            writer.family(f"{ns}_{spec.name}", "histogram", spec.help, spec.unit)
            les = _les(self._bounds[h])
            counts = gt.counts[j].tolist()
            sums = gt.sums[j].tolist()
            ex = self.groups[g].plan[j][3] if self._exemplars else -1
            for block, row, exs in rows_of[g]:
                exemplars = None
                if ex >= 0:
                    exemplars = [None if slot is None else
                                 (f'request_id="{escape_label_value(slot[0][:EXEMPLAR_ID_LENGTH])}"', slot[1], slot[2])
                                 for slot in exs[ex]]
                writer.histogram(block, les, counts[row], sums[row], exemplars)
        for k, spec in enumerate(REQUEST_COUNTERS):
            writer.family(f"{ns}_{spec.name}", "counter", spec.help)
            sums = t.counter_sums[k].tolist()
            for block, row, _ in rows:
                writer.counter(block, sums[row])

        pod_names = self._pod_names
        for (name, doc, unit), values in zip(POD_GAUGES, self.pod_gauges(snap)):
            writer.family(f"{ns}_{name}", "gauge", doc, unit)
            for key, value in values.items():
                writer.gauge(label_block(pod_names, key), value)
        for metric in self._small_families(snap):
            writer.metric(metric)

    def pod_gauges(self, snap: Snapshot) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
        """The per-pod gauges, grouped from the request label sets: (GPU memory reported, last request time)."""
        t = snap.table
        pick = self._req_to_pod
        last: dict[tuple[str, ...], float] = {}
        gpu: dict[tuple[str, ...], tuple[float, int, float]] = {}
        for s, key, _ in snap.requests:
            pod = tuple(key[i] for i in pick)
            row = s.row
            ts = float(t.last_ts[row])
            if ts > last.get(pod, -math.inf):
                last[pod] = ts
            value = float(t.gpu[row])
            if not math.isnan(value):
                report = (float(t.gpu_ts[row]), int(t.gpu_seq[row]), value)
                if report > gpu.get(pod, (-math.inf, 0, 0.0)):
                    gpu[pod] = report
        return ({pod: report[2] for pod, report in gpu.items()},
                {pod: ts for pod, ts in last.items() if ts > -math.inf})

    def zero_filled(self, snap: Snapshot) -> list[tuple[str, ...]]:
        """Request label sets to expose at 0 for the statuses they have not seen (``zero_fill_statuses``)."""
        if not (self.config.zero_fill_statuses and self._status_at >= 0):
            return []
        at = self._status_at
        seen: dict[tuple[str, ...], set[str]] = {}
        for _, key, _ in snap.requests:
            if key[at] != self._overflow:  # a folded label set is not a status's home
                seen.setdefault(key[:at] + key[at + 1:], set()).add(key[at])
        return [rest[:at] + (status,) + rest[at:]
                for rest, statuses in seen.items() for status in STATUSES if status not in statuses]

    def families(self, snap: Snapshot) -> Iterator[Metric]:
        """The prometheus-client families of a given snapshot (:meth:`collect` takes a fresh one)."""
        return self._families(snap)

    def _families(self, snap: Snapshot) -> Iterator[Metric]:
        ns = self._ns
        names = self._req_names
        t = snap.table
        rows_of = [[(dict(zip(group.names, key)), s.row, ex) for s, key, ex in series]
                   for group, (series, _) in zip(self.groups, snap.groups)]
        rows = rows_of[0]

        total = CounterMetricFamily(f"{ns}_requests_total", REQUESTS_HELP, labels=names)
        sample_name = total.name + "_total"
        for labels, row, _ in rows:
            total.samples.append(Sample(sample_name, labels, int(t.requests[row])))
        for key in self.zero_filled(snap):
            total.add_metric(key, 0)
        yield total

        for h, spec in enumerate(self.histograms):
            g, j = self._hist_at[h]
            gt = snap.groups[g][1]
            ex = self.groups[g].plan[j][3] if self._exemplars else -1
            counts, sums = gt.counts[j], gt.sums[j]
            yield self._histogram(f"{ns}_{spec.name}", spec.help, self._bounds[h], self.groups[g].names,
                                  [(lb, counts[row].tolist(), sums[row].item(), exs[ex] if ex >= 0 else None)
                                   for lb, row, exs in rows_of[g]], unit=spec.unit)
        for k, spec in enumerate(REQUEST_COUNTERS):
            sums = t.counter_sums[k]
            fam = CounterMetricFamily(f"{ns}_{spec.name}", spec.help, labels=names)
            for labels, row, _ in rows:
                fam.samples.append(Sample(fam.name + "_total", labels, sums[row].item()))
            yield fam

        for (name, doc, unit), values in zip(POD_GAUGES, self.pod_gauges(snap)):
            fam = GaugeMetricFamily(f"{ns}_{name}", doc, labels=self._pod_names, unit=unit)
            for key, value in values.items():
                fam.add_metric(key, value)
            yield fam
        yield from self._small_families(snap)

    def _small_families(self, snap: Snapshot) -> Iterator[Metric]:
        """The log, vLLM, prompt and receiver-side families: a few series per pod, built per scrape."""
        ns = self._ns
        pod_names = self._pod_names
        logs_fam = CounterMetricFamily(f"{ns}_log_messages_total",
                                       "Log lines that are not requests, by level.", labels=self._log_names)
        for key, count in snap.logs:
            logs_fam.add_metric(key, count)
        yield logs_fam

        engine_rows = snap.engines
        for i, (suffix, doc, unit) in enumerate(ENGINE_FAMILIES.values()):
            fam = GaugeMetricFamily(f"{ns}_{suffix}", doc, labels=self._engine_names, unit=unit)
            for key, values in engine_rows:
                if values[i] is not None:
                    fam.add_metric(key, values[i])
            yield fam

        prompt_rows = snap.prompts
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

        yield from self._own_families(snap)

    def _own_families(self, snap: Snapshot) -> Iterator[Metric]:
        fam = CounterMetricFamily("qwen_fluent_label_overflow_total",
                                  "Records whose label value was folded into the overflow value, by label "
                                  "(max_series: the whole label set, the family group being full).",
                                  labels=("label",))
        counts = dict.fromkeys([n for g in self.groups for n in g.names] + ["level", "engine", MAX_SERIES], 0)
        counts.update(snap.overflow)
        for label, n in counts.items():
            fam.add_metric((label,), n)
        yield fam
        yield CounterMetricFamily("qwen_fluent_series_expired_total",
                                  "Label sets removed because their pod sent nothing for series_idle_seconds.",
                                  value=snap.expired)
        fam = CounterMetricFamily("qwen_fluent_unrecognised_records_total",
                                  "Records the normaliser could not classify, by reason.", labels=("reason",))
        for reason, n in snap.unrecognised.items():
            fam.add_metric((reason,), n)
        yield fam
        fam = GaugeMetricFamily("qwen_fluent_label_sets",
                                "Label sets alive per family group; each group is capped at max_series.",
                                labels=("group",))
        for group, (series, _) in zip(self.groups, snap.groups):
            fam.add_metric((group.name,), len(series))
        for name, rows in zip(GROUPS[1:], (snap.logs, snap.engines, snap.prompts)):
            fam.add_metric((name,), len(rows))
        yield fam

    def _histogram(self, name: str, doc: str, bounds: tuple[float, ...], names: tuple[str, ...],
                   rows: list[tuple[dict[str, str], list[int], float, list[Any] | None]],
                   unit: str = "seconds") -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=names, unit=unit)
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
