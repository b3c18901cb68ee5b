"""The sensitive-data audit's counters: ``<namespace>_sensitive_*``, by kind and pod, never the text.

:class:`SensitiveMetrics` is what :class:`qwen_fluent.audit.AuditSink` counts
into and what ``/metrics`` collects when ``[audit] sensitive`` is on (when it
is off, nothing of this module is registered and no family appears):

- ``<ns>_sensitive_records_total{kind, namespace, pod}``: records whose string
  values hold a likely secret or personal datum of ``kind`` (one of
  :data:`~qwen_fluent.records.sensitive.KINDS`); a record with two kinds counts
  once under each, a record with two e-mail addresses once;
- ``<ns>_sensitive_scanned_records_total``: every record scanned (the
  denominator of a ratio);
- ``<ns>_sensitive_scans_truncated_total``: records scanned only up to the
  scanner's bound (``[audit] max_chars`` and friends): what lies past it was
  not looked at, so a zero count above is no proof for those records;
- ``<ns>_sensitive_scan_errors_total``: records the scanner raised on (a bug:
  the record is counted as scanned, nothing else);
- ``<ns>_sensitive_label_overflow_total{label}``: records whose ``namespace``
  or ``pod`` was folded into the overflow value by the caps below.

Label values come from the record's ``kubernetes`` map or tail tag (the
normaliser's resolver), never from the matched text: no sample, label or help
text here holds anything the scanner matched.

Bounded as the request families are (:mod:`.labels`): live values per label
are capped by ``[metrics] label_limits`` (``namespace`` 64, ``pod`` 1000 by
default), values longer than 256 characters fold, and at most ``[metrics]
max_series`` label sets exist at once; past that a new one counts under
``namespace`` and ``pod`` both folded (so at most ``max_series`` + 6 series).
Series of pods quiet for ``[metrics] series_idle_seconds`` are dropped at the
next scrape and their label values released, as the request families drop
theirs; a pod that comes back starts again from 1 (a counter reset, which
``rate()`` handles).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from ..records.sensitive import KINDS
from .config import MetricsConfig
from .labels import MAX_SERIES, LabelSpace

#: The label names of ``<ns>_sensitive_records_total``, in order.
LABELS = ("kind", "namespace", "pod")

#: (kind, namespace, pod) -> records, as :meth:`SensitiveMetrics.add` takes them.
Found = Mapping[tuple[str, str, str], int]


class SensitiveMetrics:
    """The audit's counts; :meth:`add` from the sink (once per message), ``collect()`` at scrape time.

    Thread-safe: the sink runs on the event loop, scrapes on the HTTP
    server's threads; both take :attr:`lock` (held for a dict update per
    kind found, or for building the families).
    """

    __slots__ = ("namespace", "lock", "scanned", "truncated", "errors", "_labels", "_series", "_max_series",
                 "_idle", "_clock")

    def __init__(self, config: MetricsConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        config = config or MetricsConfig()
        self.namespace = config.namespace
        self.lock = threading.Lock()
        self.scanned = 0
        self.truncated = 0
        self.errors = 0
        self._labels = LabelSpace(config)
        #: Folded (kind, namespace, pod) -> [records, last time counted]. At most max_series + len(KINDS).
        self._series: dict[tuple[str, str, str], list[float]] = {}
        self._max_series = config.max_series
        self._idle = config.series_idle_seconds
        self._clock = clock

    def add(self, scanned: int, truncated: int, errors: int, found: Found, now: float | None = None) -> None:
        """Count one message: ``scanned`` records, ``truncated`` of them cut, ``found`` per label set."""
        now = self._clock() if now is None else now
        with self.lock:
            self.scanned += scanned
            self.truncated += truncated
            self.errors += errors
            series = self._series
            for key, n in found.items():
                entry = series.get(key)
                if entry is None:
                    entry = self._admit(key, n)
                entry[0] += n
                entry[1] = now

    def _admit(self, key: tuple[str, str, str], records: int) -> list[float]:
        """The series a label set not seen before counts in: its values folded by the caps, held.

        Folds are counted per record, as :class:`LabelSpace` counts them (it counts one per call).
        """
        labels = self._labels
        folded = labels.fold(LABELS, key)
        for name, raw, value in zip(LABELS, key, folded):
            if raw != value:
                labels.overflow[name] += records - 1
        entry = self._series.get(folded)
        if entry is not None:
            return entry
        if len(self._series) >= self._max_series:
            overflow = labels.overflow_value
            labels.overflow[MAX_SERIES] += records
            folded = (folded[0], overflow, overflow)
            entry = self._series.get(folded)
            if entry is not None:
                return entry
        entry = [0, 0.0]
        self._series[folded] = entry
        labels.hold(LABELS, folded)
        return entry

    def expire(self, now: float) -> int:
        """Drop the series not counted in for ``series_idle_seconds`` (0: never); how many were dropped."""
        if self._idle <= 0:
            return 0
        cutoff = now - self._idle
        with self.lock:
            old = [key for key, (_, seen) in self._series.items() if seen < cutoff]
            for key in old:
                del self._series[key]
                self._labels.release(LABELS, key)
        return len(old)

    def describe(self) -> Iterator[Metric]:
        """The families' names (for the registry's clash check), without taking the lock for long."""
        return self._families({}, 0, 0, 0, {})

    def collect(self) -> Iterator[Metric]:
        self.expire(self._clock())
        with self.lock:
            series = {key: int(entry[0]) for key, entry in self._series.items()}
            scanned, truncated, errors = self.scanned, self.truncated, self.errors
            overflow = dict(self._labels.overflow)
        return self._families(series, scanned, truncated, errors, overflow)

    def _families(self, series: dict[tuple[str, str, str], int], scanned: int, truncated: int, errors: int,
                  overflow: dict[str, int]) -> Iterator[Metric]:
        ns = self.namespace
        fam = CounterMetricFamily(
            f"{ns}_sensitive_records_total",
            "Records whose strings hold a likely secret or personal datum, by kind "
            f"({', '.join(KINDS)}); a record counts once per kind. The matched text is never kept.",
            labels=LABELS)
        for key in sorted(series):
            fam.add_metric(key, series[key])
        yield fam
        yield CounterMetricFamily(f"{ns}_sensitive_scanned_records_total",
                                  "Records the sensitive-data audit scanned.", value=scanned)
        yield CounterMetricFamily(f"{ns}_sensitive_scans_truncated_total",
                                  "Records scanned only up to the audit's bound ([audit] max_chars, "
                                  "max_string_chars; depth 8, 1024 values): the rest was not looked at.",
                                  value=truncated)
        yield CounterMetricFamily(f"{ns}_sensitive_scan_errors_total",
                                  "Records the sensitive-data scanner failed on (a bug; the record was not audited).",
                                  value=errors)
        fam = CounterMetricFamily(f"{ns}_sensitive_label_overflow_total",
                                  "Audit records whose label value was folded into the overflow value, by label "
                                  "(max_series: too many label sets).", labels=("label",))
        for name in sorted(overflow):
            fam.add_metric((name,), overflow[name])
        yield fam
