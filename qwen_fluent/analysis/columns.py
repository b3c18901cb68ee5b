"""Per-request values held as compact numpy columns, for exact percentiles.

A percentile is exact only over every value, so ``analyze`` keeps each
request's numbers, not a histogram: one row per request in parallel numpy
columns, :data:`BYTES_PER_REQUEST` bytes a row:

=====================  =========  =====  ===========================================
column                 dtype      bytes  missing
=====================  =========  =====  ===========================================
``total_s``            float32    4      NaN
``queue_s``            float32    4      NaN
``inference_s``        float32    4      NaN
``ttft_s``             float32    4      NaN
``input_tokens``       int32      4      -1
``output_tokens``      int32      4      -1
``timestamp``          float64    8      NaN (float32 would round today's epoch to 128 s)
``status``             int8       1      never: an index into ``STATUSES``
``path/model/pod``     uint16     2 x 3  never: a code into :class:`Interner` (``""`` is a value)
=====================  =========  =====  ===========================================

float32 keeps 24 bits of mantissa: a duration to 1 part in 16 million (a
1.876 s request is 1.87600004673 s), far below any latency that matters, for
half the bytes of float64. Token counts are at most 1e8 (the normaliser's
bound), which int32 holds.

Rows arrive one at a time into a Python list of tuples (:data:`STAGE_ROWS` rows,
a few MB) and are moved into the numpy columns a block at a time, which is
where the cost of numpy is paid once per block, not once per value. The
columns start at :data:`INITIAL_ROWS` and double when full, one column at a
time (so growing costs one column's copy at once, not the whole table), up
to ``max_rows`` (default :data:`DEFAULT_MAX_ROWS`, 32 Mi rows, 1.3 GB).

Past ``max_rows`` the columns keep a uniform random sample of every request
seen (reservoir sampling, Vitter's Algorithm R, seeded, so a run is
repeatable), and :attr:`RequestColumns.exact` turns false: percentiles are
then estimates from that sample. The request count, the count by status, the
token sums, each column's maximum and the time span are counted over every
request whatever the bound (:attr:`RequestColumns.totals`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..records import STATUSES

#: Bytes one stored request takes in the columns (see the table above).
BYTES_PER_REQUEST = 4 * 4 + 2 * 4 + 8 + 1 + 3 * 2
#: Rows held at most before sampling starts: 32 Mi rows = 1.3 GB of columns, which fits a
#: laptop beside the rest of the process. Raise it with ``analyze --max-requests``.
DEFAULT_MAX_ROWS = 32 * 1024 * 1024
#: First size of the columns: 4096 rows, 160 KB; a small file never allocates more.
INITIAL_ROWS = 4096
#: Rows staged in Python lists before a block moves into numpy: large enough that numpy's
#: per-call cost vanishes, small enough to stay a few MB.
STAGE_ROWS = 65536

FLOAT_COLUMNS = ("total_s", "queue_s", "inference_s", "ttft_s")
INT_COLUMNS = ("input_tokens", "output_tokens")
CODE_COLUMNS = ("path", "model", "pod")
_DTYPES: dict[str, type] = {
    **dict.fromkeys(FLOAT_COLUMNS, np.float32),
    **dict.fromkeys(INT_COLUMNS, np.int32),
    "timestamp": np.float64,
    "status": np.int8,
    **dict.fromkeys(CODE_COLUMNS, np.uint16),
}
COLUMNS = tuple(_DTYPES)

_STATUS_INDEX = {name: n for n, name in enumerate(STATUSES)}
_UNKNOWN_STATUS = _STATUS_INDEX["unknown"]
#: The order of the values in a staged row (the arguments of :meth:`RequestColumns.add`).
_STAGE_ORDER = ("timestamp", "status", *CODE_COLUMNS, *FLOAT_COLUMNS, *INT_COLUMNS)


class Interner:
    """Distinct strings of one grouping column, as uint16 codes.

    At most :data:`Interner.LIMIT` distinct values: the label bounds of the
    receiver are far lower, and a log with more distinct paths than that is
    keyed by something unbounded (an id in the path); every further value is
    :data:`Interner.OTHER`, counted together.
    """

    LIMIT = 65535
    OTHER = "(other)"

    __slots__ = ("codes", "names")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, name: str) -> int:
        """The code of ``name``, assigning the next one if it is new and there is room."""
        code = self.codes.get(name)
        if code is None:
            if len(self.names) >= self.LIMIT - 1:
                return self._other()
            code = self.codes[name] = len(self.names)
            self.names.append(name)
        return code

    def _other(self) -> int:
        code = self.codes.get(self.OTHER)
        if code is None:
            code = self.codes[self.OTHER] = len(self.names)
            self.names.append(self.OTHER)
        return code


@dataclass
class Totals:
    """What is counted over every request, whatever the row bound."""

    requests: int = 0
    by_status: list[int] = field(default_factory=lambda: [0] * len(STATUSES))
    token_sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INT_COLUMNS, 0))
    maxima: dict[str, float] = field(default_factory=dict)
    first: float | None = None  # earliest timestamp
    last: float | None = None  # latest timestamp


class RequestColumns:
    """The stored requests; :meth:`add` one, :meth:`column` to read one column of the stored rows.

    :attr:`totals` is brought up to date by :meth:`flush` (which :meth:`column` calls).
    """

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be positive")
        self.max_rows = max_rows
        self.rows = 0  # rows stored
        self.totals = Totals()
        self.interners = {name: Interner() for name in CODE_COLUMNS}
        self._capacity = min(INITIAL_ROWS, max_rows)
        self._data = {name: np.empty(self._capacity, dtype) for name, dtype in _DTYPES.items()}
        self._stage: list[tuple] = []  # rows not yet in the columns, in _STAGE_ORDER
        self._codes = tuple(self.interners[name].codes for name in CODE_COLUMNS)
        self._rng = np.random.default_rng(seed)

    @property
    def exact(self) -> bool:
        """True while every request seen is stored (percentiles are exact)."""
        return self.totals.requests + len(self._stage) <= self.max_rows

    @property
    def seen(self) -> int:
        """Requests added so far, stored or not, staged or not."""
        return self.totals.requests + len(self._stage)

    @property
    def nbytes(self) -> int:
        """Bytes held by the numpy columns (allocated capacity)."""
        return sum(array.nbytes for array in self._data.values())

    def add(self, timestamp: float | None, status: str, path: str, model: str, pod: str,
            total: float | None, queue: float | None, inference: float | None, ttft: float | None,
            input_tokens: int | None, output_tokens: int | None) -> None:
        """One request (durations in seconds, ``None`` where the log did not carry the value)."""
        # one tuple per row, transposed at flush: one append here instead of eleven
        paths, models, pods = self._codes
        path_code = paths.get(path)
        if path_code is None:
            path_code = self.interners["path"].code(path)
        model_code = models.get(model)
        if model_code is None:
            model_code = self.interners["model"].code(model)
        pod_code = pods.get(pod)
        if pod_code is None:
            pod_code = self.interners["pod"].code(pod)
        self._stage.append((
            timestamp, _STATUS_INDEX.get(status, _UNKNOWN_STATUS), path_code, model_code, pod_code,
            total, queue, inference, ttft,
            -1 if input_tokens is None else input_tokens, -1 if output_tokens is None else output_tokens,
        ))
        if len(self._stage) >= STAGE_ROWS:
            self.flush()

    def flush(self) -> None:
        """Move the staged rows into the columns (done by :meth:`add` and :meth:`column` as needed)."""
        count = len(self._stage)
        if not count:
            return
        block = {name: np.array(values, _DTYPES[name]) for name, values in zip(_STAGE_ORDER, zip(*self._stage))}
        self._stage.clear()
        self._count(block, count)
        seen_before = self.totals.requests
        self.totals.requests += count
        room = self.max_rows - self.rows
        if room > 0:
            take = min(room, count)
            self._reserve(self.rows + take)
            for name, values in block.items():
                self._data[name][self.rows:self.rows + take] = values[:take]
            self.rows += take
            if take == count:
                return
            block = {name: values[take:] for name, values in block.items()}
            seen_before += take
            count -= take
        # Algorithm R: the i-th request seen (1-based) replaces a random stored row with
        # probability max_rows / i, so every request seen is stored with the same probability.
        positions = np.arange(seen_before + 1, seen_before + count + 1, dtype=np.float64)
        slots = np.floor(self._rng.random(count) * positions).astype(np.int64)
        keep = slots < self.max_rows
        if keep.any():
            target = slots[keep]
            for name, values in block.items():
                # duplicate targets: numpy keeps the last write, as sequential replacement would
                self._data[name][target] = values[keep]

    def _count(self, block: dict[str, np.ndarray], count: int) -> None:
        totals = self.totals
        statuses = np.bincount(block["status"].astype(np.intp), minlength=len(STATUSES))
        for n, value in enumerate(statuses[:len(STATUSES)]):
            totals.by_status[n] += int(value)
        for name in INT_COLUMNS:
            values = block[name]
            present = values[values >= 0]
            if present.size:
                totals.token_sums[name] += int(present.sum(dtype=np.int64))
                totals.maxima[name] = max(totals.maxima.get(name, 0), int(present.max()))
        for name in FLOAT_COLUMNS:
            values = block[name]
            present = values[~np.isnan(values)]
            if present.size:
                totals.maxima[name] = max(totals.maxima.get(name, 0.0), float(present.max()))
        stamps = block["timestamp"]
        stamps = stamps[~np.isnan(stamps)]
        if stamps.size:
            low, high = float(stamps.min()), float(stamps.max())
            totals.first = low if totals.first is None else min(totals.first, low)
            totals.last = high if totals.last is None else max(totals.last, high)

    def _reserve(self, rows: int) -> None:
        if rows <= self._capacity:
            return
        capacity = self._capacity
        while capacity < rows:
            capacity *= 2
        capacity = min(capacity, self.max_rows)
        for name in COLUMNS:  # one column at a time: the peak is one column's copy
            old = self._data[name]
            new = np.empty(capacity, old.dtype)
            new[:self.rows] = old[:self.rows]
            self._data[name] = new
            del old
        self._capacity = capacity

    def column(self, name: str) -> np.ndarray:
        """The stored rows of one column (a view: do not write to it)."""
        self.flush()
        return self._data[name][:self.rows]
