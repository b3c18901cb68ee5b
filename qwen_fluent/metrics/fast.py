"""The fast path: a whole message of typed request records into the metrics, column by column.

:meth:`LLMMetrics.observe <qwen_fluent.metrics.llm.LLMMetrics.observe>` is the
reference: one outcome at a time, a ``bisect`` and a few scalar updates per
histogram. :class:`FastRequests` does the same to a whole Forward message at
once: each field becomes a numpy column, the bucket of every value is found
with one ``searchsorted`` per histogram, and counts and sums are added with
``np.add.at`` into the label sets' rows of the
:class:`~qwen_fluent.metrics.table.RequestTable`. Label sets are resolved
once per distinct raw label tuple (status, path, model, method, the
kubernetes map's bytes, tag) and remembered until the next expiry pass;
within a message the records are first grouped by that tuple (one dict
insertion each, :meth:`FastRequests._distinct`), so the cache is consulted
once per distinct tuple and each record carries only a small integer code.

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
from collections.abc import Callable
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any

import msgspec
import numpy as np

from ..forward import Limits, decode_record
from ..forward.scan import ScannedPayload
from ..records.normaliser import Normaliser
from ..records.typed import LABEL_FIELDS, MEASUREMENTS, LeanRequestRecord, request_event, scalar
from ..records.values import MAX_DURATION_S, MAX_GPU_MEMORY_BYTES, MAX_TOKENS, MIB, label
from .llm import MAX_RAW_KEYS, LLMMetrics, raw_key_size

#: RequestEvent fields the columns below compute (ttft_s: never set by a canonical request record).
_COMPUTED = frozenset(("total_s", "queue_s", "inference_s", "ttft_s", "tpot_s", "input_tokens", "output_tokens"))


_measurements = attrgetter(*MEASUREMENTS)
#: What decides a record's label sets, besides its kubernetes map and the tag. Raw values: two
#: records share a cached resolution only if these are equal (error texts make distinct keys,
#: which costs cache room, never correctness).
_label_fields = attrgetter(*LABEL_FIELDS)
_kubernetes = attrgetter("kubernetes")
_timestamp = attrgetter("timestamp")


def _request_id(recs: list[Any]) -> Callable[[int], Any]:
    return lambda i: recs[i].request_id


def _matrix(recs: list[Any]) -> np.ndarray:
    """One row of the six measurements per typed record; None becomes NaN (typed: only ints and floats)."""
    n = len(recs)
    rows = list(map(_measurements, recs))
    try:
        return np.fromiter(chain.from_iterable(rows), np.float64, 6 * n).reshape(n, 6)
    except TypeError:  # a None among them: the slower converter makes it NaN
        return np.array(rows, dtype=np.float64).reshape(n, 6)


def typed_undecided(recs: list[Any]) -> list[int]:
    """:func:`undecided` of typed records."""
    return undecided(_matrix(recs)) if recs else []


def scanned_undecided(cols: ScannedPayload) -> list[int]:
    """:func:`undecided` of a scanned payload."""
    return undecided(np.frombuffer(cols.measures, np.float64).reshape(cols.n, len(MEASUREMENTS)))
#: A cached resolution's rows, one per request group.
_rows = itemgetter(2)
#: A record the scanner took, read for its label set (the first record of a label combination not cached).
_lean = msgspec.msgpack.Decoder(LeanRequestRecord)


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


def _readings(m: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Each measurement column of ``m`` (n x 6) as (values, usable): input and output tokens, total, queue
    and inference seconds, GPU bytes."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf * MiB is inf, past the bound: unusable, as it should
        gpu = m[:, 5] * MIB
        gpu_ok = (m[:, 5] >= 0) & (gpu <= MAX_GPU_MEMORY_BYTES)
    return _tokens(m[:, 0]), _tokens(m[:, 1]), _ms(m[:, 2]), _ms(m[:, 3]), _ms(m[:, 4]), (gpu, gpu_ok)


def undecided(m: np.ndarray) -> list[int]:
    """The rows of ``m`` (n x 6 measurements) with no usable measurement: the normaliser decides those
    records on their id and status, or reads them as something else (a log line, a vLLM stats line)."""
    usable = np.zeros(len(m), bool)
    for _, ok in _readings(m):
        usable |= ok
    return np.flatnonzero(~usable).tolist()


def _flat_view(counts: np.ndarray) -> np.ndarray:
    """A 1-D view of a histogram's bucket counts, the same memory: the adds must land in the table.

    ``reshape(-1)`` of a C-contiguous array is always a view; anything else would silently copy, and the
    counts added to the copy would be lost, so it is refused. (Setting ``.shape``, which raised instead
    of copying, is deprecated from NumPy 2.5.)
    """
    if not counts.flags.c_contiguous:
        raise ValueError("histogram counts must be C-contiguous to be added to in place")
    return counts.reshape(-1)


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
        #: The previous :meth:`timestamps` call's answers.
        self._last_stamps: dict[Any, float | None] = {}

    def timestamps(self, raws: set[Any]) -> dict[Any, float | None]:
        """``normaliser.timestamp`` of each value in the set ``raws``; values the previous call saw are
        answered from its result.

        The pipeline asks for a message's stamps twice, to find the unusable
        ones (``MetricsSink._stamp_entries``) and then to count them here; a
        request log often stamps each record to the millisecond, and a parse
        per distinct value (about 0.5 us) was then paid twice a record
        (measured: 3.92 against 2.33 us a kubernetes record, with a stamp per
        record against one shared by the message). Bounded: it keeps one
        call's answers, at most one message's entries.
        """
        last = self._last_stamps
        known = raws & last.keys()
        out = {raw: last[raw] for raw in known} if known else {}
        timestamp = self.normaliser.timestamp
        for raw in raws - known if known else raws:
            out[raw] = timestamp(raw)
        self._last_stamps = out
        return out

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
        self._cache(key, (series, folds, tuple(s.row for s in series)))

    def _cache(self, key: tuple[Any, ...], resolution: tuple[Any, ...]) -> None:
        metrics = self.metrics
        cache = metrics.raw_keys
        if key not in cache:
            size = raw_key_size(key)
            if len(cache) >= MAX_RAW_KEYS or metrics.raw_key_bytes + size > metrics.max_raw_key_bytes:
                cache.clear()  # bounded by count and bytes: emptied and refilled (MAX_RAW_KEY_BYTES)
                metrics.raw_key_bytes = 0
            metrics.raw_key_bytes += size
        cache[key] = resolution

    # -- a whole message --------------------------------------------------------

    def apply(self, recs: list[Any], tag: Any, now: float, others: int | list[Any] = 0) -> bool:
        """Count every record of ``recs``; ``False`` (nothing changed) where it must go record by record.

        ``others``: the message's records that go the general way after these (they may admit log,
        vLLM or prompt label sets), as their outcomes, or as a number (each then assumed to bring new
        values for every label name: :meth:`LLMMetrics.has_room`).
        """
        n = len(recs)
        if n == 0:
            return True
        codes, hits, keys, firsts = self._distinct(recs, tag)
        m = _matrix(recs)

        def stamps() -> np.ndarray:
            # One parse per distinct value; a record without one takes the message's time.
            raw_ts = list(map(_timestamp, recs))
            found = {raw: now if ts is None else ts for raw, ts in self.timestamps(set(raw_ts)).items()}
            if len(found) == 1:  # request logs of one message often share a stamp (to the second)
                return np.full(n, next(iter(found.values())), dtype=np.float64)
            return np.fromiter(map(found.__getitem__, raw_ts), np.float64, n)

        return self._count(n, m, codes, hits, keys, firsts, stamps, recs.__getitem__, _request_id(recs), tag, now,
                           others)

    def apply_columns(self, cols: ScannedPayload, tag: Any, now: float, skip: list[int] | None = None,
                      others: list[Any] | None = None) -> bool:
        """:meth:`apply` for a payload the scanner read (``qwen_fluent.forward.scan``): the same counts, from
        its columns; a record is decoded only where one is read whole (the first of a label combination
        not cached, an exemplar's request id). ``False`` (nothing changed): read the payload otherwise.

        ``skip``: records (indices, ascending) the caller takes the general way instead (log lines among
        request logs: :func:`scanned_undecided`); the others are counted as if the message held only them,
        label combinations admitted in the order of their first counted record, with room kept for
        ``others``, those records' outcomes (or, without them, ``len(skip)`` records of any family).

        A scanned record holds only keys :data:`LeanRequestRecord` takes, with the types it takes, so the
        columns are those :meth:`apply` would build of the decoded records: the measurements as float64
        (NaN for nil or absent), label combinations grouped by their raw bytes (equal bytes, equal values;
        equal values in other bytes only cost a second cache entry), stamps by their raw bytes.
        """
        n = cols.n
        payload = cols.payload
        m = np.frombuffer(cols.measures, np.float64).reshape(n, len(MEASUREMENTS))
        codes = np.frombuffer(cols.label_codes, np.int64).astype(np.intp, copy=False)
        keys = [(key, tag) for key in cols.label_keys]
        cache = self.metrics.raw_keys
        hits = list(map(cache.get, keys))
        bounds = np.frombuffer(cols.records, np.int64).reshape(n, 2)
        spans = np.frombuffer(cols.spans, np.int64).reshape(n, 2)

        def record(i: int) -> Any:
            start, end = bounds[i].tolist()
            return _lean.decode(payload[start:end])

        try:
            if None in hits:
                # A combination the record-by-record path resolved (near a cap: ``remember``) is cached
                # under its typed key: found by decoding its first record, then kept under both.
                for c, hit in enumerate(hits):
                    if hit is None:
                        hit = cache.get(self.raw_key(record(cols.label_firsts[c]), tag))
                        if hit is not None:
                            self._cache(keys[c], hit)
                            hits[c] = hit
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False

        def request_id(i: int) -> Any:
            start, end = spans[i].tolist()
            return scalar.decode(payload[start:end]) if end else None

        def stamps() -> np.ndarray:
            # As _stamp_entries and apply read them: a record's own stamp where usable, else its
            # entry's time, else the message's. The scanner read the commonest ISO 8601 forms itself
            # (as iso_seconds does: tests/forward/test_scan.py); the normaliser reads the rest.
            stamp_codes = np.frombuffer(cols.stamp_codes, np.int64)
            seconds = np.frombuffer(cols.stamp_seconds, np.float64)
            unread = np.isnan(seconds)
            if not unread.any():
                return seconds[stamp_codes]
            values = [scalar.decode(raw) if missing else None
                      for raw, missing in zip(cols.stamp_values, unread.tolist())]
            found = self.timestamps({v for v, missing in zip(values, unread.tolist()) if missing})
            per_code = [found[v] if missing else read for v, missing, read in
                        zip(values, unread.tolist(), seconds.tolist())]
            if None not in per_code:
                return np.array(per_code, np.float64)[stamp_codes]
            usable = np.array([ts is not None for ts in per_code])
            ts = np.array([now if ts is None else ts for ts in per_code], np.float64)[stamp_codes]
            times = np.frombuffer(cols.times, np.float64)
            for i in np.flatnonzero(~usable[stamp_codes]).tolist():
                when = self.normaliser.timestamp(float(times[i]))
                ts[i] = now if when is None else when
            return ts

        firsts = cols.label_firsts
        room: int | list[Any] = 0
        if skip:
            # Only the kept rows: their codes renumbered in the order each combination first appears
            # among them, each row read back through ``index`` (kept row -> record).
            keep = np.ones(n, bool)
            keep[skip] = False
            index = np.flatnonzero(keep)
            kept_codes = codes[index]
            present, first_row = np.unique(kept_codes, return_index=True)
            order = np.argsort(first_row, kind="stable")
            present, first_row = present[order], first_row[order]
            renumber = np.empty(len(keys), np.intp)
            renumber[present] = np.arange(len(present))
            codes = renumber[kept_codes]
            keys = [keys[c] for c in present.tolist()]
            hits = [hits[c] for c in present.tolist()]
            firsts = index[first_row].tolist()  # record indices: record() reads them as they are
            m = m[index]
            n, room = len(index), (others if others is not None else len(skip))
            whole_request_id, whole_stamps = request_id, stamps

            def request_id(i: int) -> Any:
                return whole_request_id(int(index[i]))

            def stamps() -> np.ndarray:
                return whole_stamps()[index]

        try:
            return self._count(n, m, codes, hits, keys, firsts, stamps, record, request_id, tag, now, room)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False  # a record the lean decoder refuses after all (not expected): nothing was changed

    def _count(self, n: int, m: np.ndarray, codes: np.ndarray, hits: list[Any], keys: list[Any], firsts: list[int],
               stamps: Callable[[], np.ndarray], record: Callable[[int], Any], request_id: Callable[[int], Any],
               tag: Any, now: float, others: int | list[Any]) -> bool:
        """Count a message from its columns: ``m`` (n x 6 measurements), ``codes`` (each record's label
        combination), per combination its cached resolution (``hits``, ``None`` if not cached), cache key
        and first record; ``stamps()`` each record's time; ``record(i)`` and ``request_id(i)`` read one
        record. ``False`` (nothing changed) where it must go record by record."""
        metrics = self.metrics
        ((itok, itok_ok), (otok, otok_ok), (total, total_ok), (queue, queue_ok), (inference, inference_ok),
         (gpu, gpu_ok)) = _readings(m)
        if not (itok_ok | otok_ok | total_ok | queue_ok | inference_ok | gpu_ok).all():
            return False  # the normaliser decides such a record on its id and status, or looks further
        if None in hits and not self._admit(record, tag, keys, firsts, hits, others):
            return False
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot_ok = otok_ok & inference_ok & (otok > 0)
            tpot = np.where(tpot_ok, inference / np.where(tpot_ok, otok, 1), 0.0)
        observed = {
            "total_s": (total, total_ok), "queue_s": (queue, queue_ok), "inference_s": (inference, inference_ok),
            "ttft_s": (None, None), "tpot_s": (tpot, tpot_ok),
            "input_tokens": (itok, itok_ok), "output_tokens": (otok, otok_ok),
        }

        ts_arr = stamps()

        # Nothing below can refuse the message: update the state.
        groups = metrics.groups
        width = len(groups)
        # Rows per record: each distinct label tuple's rows, indexed by the record's code.
        rows_all = np.array(list(map(_rows, hits)), dtype=np.intp).reshape(len(hits), width)[codes]
        rows = rows_all[:, 0]
        t = metrics.primary.table
        np.add.at(t.requests, rows, 1)
        np.maximum.at(t.last_ts, rows, ts_arr)
        for k, field in enumerate(self._counters):
            values, ok = observed[field]
            if ok.all():
                np.add.at(t.counter_sums[k], rows, values)
            elif ok.any():
                idx = np.flatnonzero(ok)
                np.add.at(t.counter_sums[k], rows[idx], values[idx])
        epoch = metrics._epoch
        for hit in hits:
            for s in hit[0]:
                s.touched = epoch
        if any(hit[1] for hit in hits):  # folds count once per record
            per_code = np.bincount(codes, minlength=len(hits)).tolist()
            folded: Counter[str] = Counter()
            for hit, count in zip(hits, per_code):
                for name in hit[1]:
                    folded[name] += count
            metrics._space.overflow.update(folded)

        exemplars = metrics._exemplars
        everything = np.arange(n)
        for g, group in enumerate(groups):
            gt = group.table
            for j, (field, bounds, ex) in enumerate(self._plans[g]):
                values, ok = observed[field]
                if values is None:
                    continue
                if ok.all():  # the common case: no fancy indexing
                    idx, v, r = everything, values, rows_all[:, g]
                elif ok.any():
                    idx = np.flatnonzero(ok)
                    v = values[idx]
                    r = rows_all[idx, g]
                else:
                    continue
                b = np.searchsorted(bounds, v, side="left")
                # Counts are integers: adding them in any order gives the same totals.
                flat = _flat_view(gt.counts[j])
                np.add.at(flat, r * gt.widths[j] + b, 1)
                np.add.at(gt.sums[j], r, v)  # float sums: in record order, as the reference adds them
                if ex >= 0 and exemplars:
                    self._exemplars(request_id, hits, codes, g, idx, r, b, v, ts_arr, ex, gt.widths[j])

        idx = np.flatnonzero(gpu_ok)
        if idx.size:
            self._gpu(rows[idx], gpu[idx], ts_arr[idx])
        return True

    def _distinct(self, recs: list[Any], tag: Any) -> tuple[np.ndarray, list[Any], list[Any], list[int]]:
        """Each record's code (the index of its raw label tuple among the message's distinct ones),
        and per code: its cached resolution (``None`` if not cached), its raw key, its first record.

        One dict insertion per record, then one cache lookup per distinct raw tuple. The common
        message is one pod's chunk (a tail input reads one container's file per chunk), whose
        kubernetes maps are all the same bytes: then only the request fields make the local key,
        and the map is copied and hashed once, not once per record.
        """
        n = len(recs)
        labels = list(map(_label_fields, recs))
        kubes = list(map(_kubernetes, recs))
        local: dict[Any, int] = {}
        if kubes.count(kubes[0]) == n:
            block = bytes(kubes[0])
            # setdefault(key, i) answers the first record index of each distinct key, in C.
            first_of = list(map(local.setdefault, labels, range(n)))
            firsts = list(local.values())
            keys = [(labels[i], block, tag) for i in firsts]
        else:
            full = list(zip(labels, map(bytes, kubes), repeat(tag, n)))
            first_of = list(map(local.setdefault, full, range(n)))
            firsts = list(local.values())
            keys = [full[i] for i in firsts]
        code_of = np.empty(n, np.intp)
        code_of[firsts] = np.arange(len(firsts))
        codes = code_of[np.fromiter(first_of, np.intp, n)]
        cache = self.metrics.raw_keys
        return codes, list(map(cache.get, keys)), keys, firsts

    def _admit(self, record: Callable[[int], Any], tag: Any, keys: list[tuple[Any, ...]], firsts: list[int],
               hits: list[Any], others: int | list[Any]) -> bool:
        """Admit the label sets of raw label tuples not seen yet, in record order, where no cap can
        make that order matter; fill ``hits``. ``False`` (nothing admitted): go record by record."""
        metrics = self.metrics
        events = {}
        for c, hit in enumerate(hits):  # codes are numbered in record order of first appearance
            if hit is None:
                event = self.event(record(firsts[c]), tag)
                if event is None:
                    return False
                events[c] = event
        if not metrics.has_room(list(events.values()), others):
            return False
        for c, event in events.items():
            self._remember(keys[c], *metrics.resolve_request(event))
            hits[c] = metrics.raw_keys[keys[c]]
        return True

    def _exemplars(self, request_id: Callable[[int], Any], hits: list[Any], codes: np.ndarray, g: int, idx: np.ndarray,
                   r: np.ndarray, b: np.ndarray, v: np.ndarray, ts: np.ndarray, ex: int, width: int) -> None:
        """Each (label set, bucket)'s last request id, as a record-by-record pass would leave it."""
        keys = r * width + b
        ts = ts[idx]  # r, b and v are the rows with a value (idx); ts is every record's
        # The last occurrence of each key: the first one in the reversed order.
        _, first_rev = np.unique(keys[::-1], return_index=True)
        last = len(keys) - 1 - first_rev
        limit = self._limit
        for j, i, bucket, value, when in zip(last.tolist(), idx[last].tolist(), b[last].tolist(),
                                             v[last].tolist(), ts[last].tolist()):
            rid = request_id(i)
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
                        rid = label(request_id(int(idx[jj])), limit)
                        if rid:
                            value, when = float(v[jj]), float(ts[jj])
                            break
                if not rid:
                    continue
            hits[codes[i]][0][g].ex[ex][bucket] = (rid, value, when)

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
