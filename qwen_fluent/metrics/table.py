"""The request families' numbers: label sets grouped by label list, one numpy row per label set.

Request families that carry the same label list form a :class:`RequestGroup`
(by default two: the counters, with ``status``, and the histograms, without).
Each label set of a group (a :class:`~qwen_fluent.metrics.series.RequestSeries`)
owns a row of its group's :class:`RequestTable`. Keeping the numbers as
columns, not per-object lists, is what lets the fast path (:mod:`.fast`)
update a whole Forward message with a few numpy calls (``searchsorted`` for
the buckets, ``add.at`` for counts and sums) and a scrape copy a consistent
snapshot in one step.

``np.add.at`` adds unbuffered, in index order, so a row's sum receives the
same float additions in the same order as adding one record at a time: the
fast and the reference paths agree to the last bit, which the property tests
check.

Bound: a group's rows are its live label sets plus freed rows, at most
``max_series + 1`` (the overflow label set); the arrays double when full,
starting at 64 rows. Per row: 8 bytes per bucket of each histogram of the
group plus about 100 bytes, so 2000 label sets of the default histograms take
about 2.6 MB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .families import HistogramSpec, SumCounterSpec
from .series import RequestSeries

#: Rows allocated at first; the arrays double from there.
INITIAL_ROWS = 64


class RequestTable:
    """Counts and sums of a group's histograms, its counters' sums, and the per-pod gauge inputs, by row.

    ``requests``, ``last_ts`` and the ``gpu`` columns are used by the group
    that carries ``requests_total`` (the primary one) only.
    """

    def __init__(self, specs: tuple[HistogramSpec, ...], bounds: list[tuple[float, ...]],
                 counters: tuple[SumCounterSpec, ...] = ()) -> None:
        self.specs = specs
        self.bounds = bounds
        self.counter_specs = counters
        self.widths = [len(b) + 1 for b in bounds]  # +Inf bucket
        self.capacity = 0
        self.counts: list[np.ndarray] = [np.zeros((0, w), np.int64) for w in self.widths]
        self.sums: list[np.ndarray] = [np.zeros(0, np.int64 if s.integer else np.float64) for s in specs]
        self.counter_sums: list[np.ndarray] = [np.zeros(0, np.int64) for _ in counters]
        self.requests = np.zeros(0, np.int64)
        self.last_ts = np.zeros(0, np.float64)
        self.gpu = np.zeros(0, np.float64)  # NaN: none reported
        self.gpu_ts = np.zeros(0, np.float64)
        self.gpu_seq = np.zeros(0, np.int64)
        self._free: list[int] = []
        self._next = 0
        self._grow(INITIAL_ROWS)

    def _columns(self) -> list[tuple[str, int | None, float]]:
        """(attribute, index in a list attribute or None, fill value) of every column."""
        cols: list[tuple[str, int | None, float]] = [("counts", i, 0) for i in range(len(self.counts))]
        cols += [("sums", i, 0) for i in range(len(self.sums))]
        cols += [("counter_sums", i, 0) for i in range(len(self.counter_sums))]
        cols += [("requests", None, 0), ("last_ts", None, -np.inf), ("gpu", None, np.nan),
                 ("gpu_ts", None, -np.inf), ("gpu_seq", None, 0)]
        return cols

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for attr, i, fill in self._columns():
            a = getattr(self, attr) if i is None else getattr(self, attr)[i]
            b = np.full((capacity,) + a.shape[1:], fill, a.dtype)
            b[:old] = a[:old]
            if i is None:
                setattr(self, attr, b)
            else:
                getattr(self, attr)[i] = b
        self.capacity = capacity

    def add_row(self) -> int:
        """A zeroed row for a new label set."""
        if self._free:
            return self._free.pop()
        if self._next == self.capacity:
            self._grow(self.capacity * 2)
        row = self._next
        self._next += 1
        return row

    def release(self, row: int) -> None:
        """The label set of ``row`` expired: reset the row and keep it for the next one."""
        for attr, i, fill in self._columns():
            a = getattr(self, attr) if i is None else getattr(self, attr)[i]
            a[row] = fill
        self._free.append(row)

    def snapshot(self) -> RequestTable:
        """A copy of every array (call under the aggregator's lock); a few MB at the cap."""
        copy = RequestTable.__new__(RequestTable)
        copy.__dict__.update(self.__dict__)
        for attr, i, _ in self._columns():
            if i is None:
                setattr(copy, attr, getattr(self, attr).copy())
        copy.counts = [c.copy() for c in self.counts]
        copy.sums = [s.copy() for s in self.sums]
        copy.counter_sums = [s.copy() for s in self.counter_sums]
        copy._free = []
        return copy


class RequestGroup:
    """The request families that share one label list: their label sets and their numbers.

    ``names`` are the label names in key order: request labels, then the
    Kubernetes ones, then pod labels (``split`` is where the request labels
    end: the rest of a key is the pod's expiry group). ``histograms`` are
    the indexes, in :data:`~qwen_fluent.metrics.families.REQUEST_HISTOGRAMS`,
    of the histograms kept here, and ``plan`` has per histogram kept here
    ``(global index, RequestEvent field index, bounds, exemplar slot or -1)``.
    """

    def __init__(self, name: str, names: tuple[str, ...], split: int, histograms: list[int],
                 specs: tuple[HistogramSpec, ...], bounds: list[tuple[float, ...]],
                 counters: tuple[SumCounterSpec, ...], key: Callable[[Any], tuple[Any, ...]],
                 fields: tuple[str, ...]) -> None:
        self.name = name
        self.names = names
        self.split = split
        self.histograms = histograms
        self.key = key
        mine = tuple(specs[h] for h in histograms)
        self.table = RequestTable(mine, [bounds[h] for h in histograms], counters)
        ex = [j for j, spec in enumerate(mine) if spec.exemplars]
        self.exemplar_widths = tuple(len(bounds[histograms[j]]) + 1 for j in ex)
        self.plan = tuple((h, fields.index(specs[h].field), bounds[h], ex.index(j) if j in ex else -1)
                          for j, h in enumerate(histograms))
        self.counter_fields = tuple(fields.index(c.field) for c in counters)
        self.store: dict[tuple[Any, ...], RequestSeries] = {}

    def new_series(self, key: tuple[str, ...], epoch: int) -> RequestSeries:
        return RequestSeries(key, key[self.split:], epoch, self.table.add_row(), self.exemplar_widths)
