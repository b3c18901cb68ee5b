"""The fast path: a whole message of typed request records into the metrics, column by column.

:meth:`LLMMetrics.observe <qwen_fluent.metrics.llm.LLMMetrics.observe>` is the
reference: one outcome at a time, a ``bisect`` and a few scalar updates per
histogram. :class:`FastRequests` does the same to a whole Forward message at
once: each field becomes a numpy column, the bucket of every value is found
with one ``searchsorted`` per histogram, and counts and sums are added with
``np.add.at`` into the label sets' rows of the
:class:`~qwen_fluent.metrics.table.RequestTable`. Label sets are resolved
once per distinct raw label tuple (status, path, model, method, the
kubernetes map's bytes, tag) and remembered until the next expiry pass.

Same numbers, to the bit. ``add.at`` adds in record order, so every sum sees
the additions the reference makes, in its order; exemplars keep the last
request id per bucket; GPU reports keep the newest, ties by arrival. Where
the columnar answer could differ from the record-by-record one, the message
is not taken here (:meth:`FastRequests.apply` returns ``False`` before
changing anything) and the caller goes record by record:

- a raw label tuple not seen since the last expiry whose label set may
  have to be admitted close to a cap (admission order matters once a cap is
  reached; far from every cap, new label sets are admitted in record order
  and the message is still counted column by column);
- a record whose measurements are all unusable (the normaliser would then
  decide on its request id and status alone, or look further). (A numeric
  string never gets here: the typed decoder refuses it.)

``tests/metrics/test_fast_path.py`` runs messages through both and compares
every sample.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from ..forward import Limits, decode_record
from ..records.normaliser import Normaliser
from ..records.typed import MEASUREMENTS, request_event
from ..records.values import MAX_DURATION_S, MAX_GPU_MEMORY_BYTES, MAX_TOKENS, MIB, label
from .llm import MAX_RAW_KEYS, LLMMetrics

#: RequestEvent fields the columns below compute (ttft_s: never set by a canonical request record).
_COMPUTED = frozenset(("total_s", "queue_s", "inference_s", "ttft_s", "tpot_s", "input_tokens", "output_tokens"))


_measurements = attrgetter(*MEASUREMENTS)
#: What decides a record's label sets, besides its kubernetes map and the tag. Raw values: two
#: records share a cached resolution only if these are equal (error texts make distinct keys,
#: which costs cache room, never correctness).
_label_fields = attrgetter("status", "http_status", "status_code", "http_status_code", "error", "error_type",
                           "path", "model", "method")
_kubernetes = attrgetter("kubernetes")
_timestamp = attrgetter("timestamp")
#: A cached resolution's rows, one per request group.
_rows = itemgetter(2)


def _ms(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds to seconds as ``values.seconds(v, 1000)`` does, and which are usable."""
    with np.errstate(invalid="ignore"):
        s = values / 1000.0
        return s, (values >= 0) & (s <= MAX_DURATION_S)


def _tokens(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole token counts in [0, MAX_TOKENS], as ``values.tokens`` reads them."""
    with np.errstate(invalid="ignore"):
        ok = (values >= 0) & (values <= MAX_TOKENS) & (values == np.floor(values))
    return np.where(ok, values, 0).astype(np.int64), ok


class FastRequests:
    """Applies the typed request records of one message to ``metrics``, as ``normaliser`` + observe would."""

    def __init__(self, metrics: LLMMetrics, normaliser: Normaliser, limits: Limits | None = None) -> None:
        self.metrics = metrics
        self.normaliser = normaliser
        self.limits = limits if limits is not None else Limits()
        self._limit = normaliser.config.max_label_length
        specs = metrics.histograms
        fields = {spec.field for spec in specs} | {c.field for c in metrics.primary.table.counter_specs}
        unknown = fields - _COMPUTED
        if unknown:  # a new family needs its column here too, or the two paths would disagree
            raise ValueError(f"the fast path does not compute {sorted(unknown)}")
        #: Per request group, per histogram in it: (field, bounds as an array, exemplar slot).
        self._plans = [[(specs[h].field, np.array(bounds, np.float64), ex) for h, _, bounds, ex in group.plan]
                       for group in metrics.groups]
        self._counters = [c.field for c in metrics.primary.table.counter_specs]

    # -- one record at a time (new label sets, odd values) --------------------

    def raw_key(self, rec: Any, tag: Any) -> tuple[Any, ...]:
        """What decides a record's label set, before any cleaning."""
        return (_label_fields(rec), bytes(rec.kubernetes), tag)

    def event(self, rec: Any, tag: Any) -> Any:
        """The RequestEvent the normaliser makes of ``rec``, or ``None`` (fall back to it).

        Changes nothing but the normaliser's caches. Raises ForwardError where
        the general decoder would refuse the record's kubernetes map.
        """
        raw = bytes(rec.kubernetes)
        meta = decode_record(raw, self.limits) if raw else None
        source, label_model = self.normaliser.source(meta, tag)
        return request_event(rec, source, label_model, self.normaliser)

    def remember(self, rec: Any, tag: Any, event: Any, now: float) -> None:
        """Count ``event`` (made of ``rec`` by :meth:`event`) the reference way and remember its label set."""
        self._remember(self.raw_key(rec, tag), *self.metrics.observe_request(event, now))

    def _remember(self, key: tuple[Any, ...], series: tuple[Any, ...], folds: tuple[str, ...]) -> None:
        """Cache a raw label tuple's resolution: its label set per request group, folds, and rows."""
        cache = self.metrics.raw_keys
        if len(cache) >= MAX_RAW_KEYS:
            cache.clear()
        cache[key] = (series, folds, tuple(s.row for s in series))

    # -- a whole message --------------------------------------------------------

    def apply(self, recs: list[Any], tag: Any, now: float, others: int = 0) -> bool:
        """Count every record of ``recs``; ``False`` (nothing changed) where it must go record by record.

        ``others`` is how many records of the message go the general way
        after these (they may admit log, vLLM or prompt label sets).
        """
        metrics = self.metrics
        n = len(recs)
        if n == 0:
            return True
        keys = list(zip(map(_label_fields, recs), map(bytes, map(_kubernetes, recs)), repeat(tag, n)))
        cache = metrics.raw_keys
        resolved = list(map(cache.get, keys))

        # One row of the six measurements per record; None becomes NaN (typed: only ints and floats).
        rows = list(map(_measurements, recs))
        try:
            m = np.fromiter(chain.from_iterable(rows), np.float64, 6 * n).reshape(n, 6)
        except TypeError:  # a None among them: the slower converter makes it NaN
            m = np.array(rows, dtype=np.float64).reshape(n, 6)
        itok, itok_ok = _tokens(m[:, 0])
        otok, otok_ok = _tokens(m[:, 1])
        total, total_ok = _ms(m[:, 2])
        queue, queue_ok = _ms(m[:, 3])
        inference, inference_ok = _ms(m[:, 4])
        with np.errstate(invalid="ignore"):
            gpu = m[:, 5] * MIB
            gpu_ok = (m[:, 5] >= 0) & (gpu <= MAX_GPU_MEMORY_BYTES)
        if not (itok_ok | otok_ok | total_ok | queue_ok | inference_ok | gpu_ok).all():
            return False  # the normaliser decides such a record on its id and status, or looks further
        if None in resolved and not self._admit(recs, tag, keys, resolved, others):
            return False
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot_ok = otok_ok & inference_ok & (otok > 0)
            tpot = np.where(tpot_ok, inference / np.where(tpot_ok, otok, 1), 0.0)
        observed = {
            "total_s": (total, total_ok), "queue_s": (queue, queue_ok), "inference_s": (inference, inference_ok),
            "ttft_s": (None, None), "tpot_s": (tpot, tpot_ok),
            "input_tokens": (itok, itok_ok), "output_tokens": (otok, otok_ok),
        }

        # Timestamps: one parse per distinct value; a record without one takes the message's time.
        raw_ts = list(map(_timestamp, recs))
        timestamp = self.normaliser.timestamp
        stamps = {}
        for raw in set(raw_ts):
            ts = timestamp(raw)
            stamps[raw] = now if ts is None else ts
        ts_arr = np.array(list(map(stamps.__getitem__, raw_ts)), dtype=np.float64)

        # Nothing below can refuse the message: update the state.
        groups = metrics.groups
        width = len(groups)
        rows_all = np.fromiter(chain.from_iterable(map(_rows, resolved)), np.intp, n * width).reshape(n, width)
        rows = rows_all[:, 0]
        t = metrics.primary.table
        np.add.at(t.requests, rows, 1)
        np.maximum.at(t.last_ts, rows, ts_arr)
        for k, field in enumerate(self._counters):
            values, ok = observed[field]
            if ok.any():
                idx = np.flatnonzero(ok)
                np.add.at(t.counter_sums[k], rows[idx], values[idx])
        epoch = metrics._epoch
        distinct = set(resolved)
        for hit in distinct:
            for s in hit[0]:
                s.touched = epoch
        if any(hit[1] for hit in distinct):  # folds count once per record
            folded: Counter[str] = Counter()
            for hit in resolved:
                if hit[1]:
                    folded.update(hit[1])
            metrics._space.overflow.update(folded)

        exemplars = metrics._exemplars
        for g, group in enumerate(groups):
            gt = group.table
            for j, (field, bounds, ex) in enumerate(self._plans[g]):
                values, ok = observed[field]
                if values is None or not ok.any():
                    continue
                idx = np.flatnonzero(ok)
                v = values[idx]
                r = rows_all[idx, g]
                b = np.searchsorted(bounds, v, side="left")
                np.add.at(gt.counts[j], (r, b), 1)
                np.add.at(gt.sums[j], r, v)
                if ex >= 0 and exemplars:
                    self._exemplars(recs, resolved, g, idx, r, b, v, ts_arr, ex, gt.widths[j])

        idx = np.flatnonzero(gpu_ok)
        if idx.size:
            self._gpu(rows[idx], gpu[idx], ts_arr[idx])
        return True

    def _admit(self, recs: list[Any], tag: Any, keys: list[tuple[Any, ...]], resolved: list[Any],
               others: int) -> bool:
        """Admit the label sets of raw label tuples not seen yet, in record order, where no cap can
        make that order matter; fill ``resolved``. ``False`` (nothing admitted): go record by record."""
        metrics = self.metrics
        first: dict[tuple[Any, ...], int] = {}
        for i, hit in enumerate(resolved):
            if hit is None and keys[i] not in first:
                first[keys[i]] = i
        events = {}
        for key, i in first.items():
            event = self.event(recs[i], tag)
            if event is None:
                return False
            events[key] = event
        if not metrics.has_room(list(events.values()), others):
            return False
        hits = {}
        for key, event in events.items():
            self._remember(key, *metrics.resolve_request(event))
            hits[key] = metrics.raw_keys[key]
        for i, hit in enumerate(resolved):
            if hit is None:
                resolved[i] = hits[keys[i]]
        return True

    def _exemplars(self, recs: list[Any], resolved: list[Any], g: int, idx: np.ndarray, r: np.ndarray,
                   b: np.ndarray, v: np.ndarray, ts: np.ndarray, ex: int, width: int) -> None:
        """Each (label set, bucket)'s last request id, as a record-by-record pass would leave it."""
        keys = r * width + b
        # The last occurrence of each key: the first one in the reversed order.
        _, first_rev = np.unique(keys[::-1], return_index=True)
        last = len(keys) - 1 - first_rev
        limit = self._limit
        for j, i, bucket, value, when in zip(last.tolist(), idx[last].tolist(), b[last].tolist(),
                                             v[last].tolist(), ts[last].tolist()):
            rid = recs[i].request_id
            # label() of a short ASCII string is the string stripped; anything else goes through label().
            if type(rid) is str and len(rid) <= limit and rid.isascii():
                rid = rid.strip()
            else:
                rid = label(rid, limit)
            if not rid:
                # A blank id does not replace the slot: the latest earlier record that had one does.
                k = keys[j]
                for jj in range(j - 1, -1, -1):
                    if keys[jj] == k:
                        rid = label(recs[int(idx[jj])].request_id, limit)
                        if rid:
                            value, when = float(v[jj]), float(ts[jj])
                            break
                if not rid:
                    continue
            resolved[i][0][g].ex[ex][bucket] = (rid, value, when)

    def _gpu(self, rows: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        """The newest GPU-memory report per label set, ties to the later one; numbered in arrival order."""
        metrics = self.metrics
        t = metrics.primary.table
        base = metrics.reports
        seq = np.arange(base + 1, base + 1 + rows.size, dtype=np.int64)
        metrics.reports = base + rows.size
        order = np.lexsort((seq, ts, rows))  # by row, then timestamp, then arrival
        rows_sorted = rows[order]
        ends = np.flatnonzero(np.append(rows_sorted[1:] != rows_sorted[:-1], True))
        for k in order[ends].tolist():
            row = int(rows[k])
            when = float(ts[k])
            if when >= t.gpu_ts[row]:
                t.gpu[row] = float(values[k])
                t.gpu_ts[row] = when
                t.gpu_seq[row] = int(seq[k])
