"""The LLM metric families: :class:`LLMMetrics` aggregates outcomes and exposes them.

Two ways in, one state. :meth:`LLMMetrics.observe` takes one normalised
outcome at a time: the reference path, plain and general. The fast path
(:mod:`.fast`) takes a whole Forward message of typed request records and
updates the same state with a few numpy operations. Request label sets keep
their numbers in a :class:`~.table.RequestTable` (a row each); the request
histograms and counters are a table of specs (:mod:`.families`), so adding
one is one line there. Label caps are checked only when a label tuple is seen
for the first time (or is one that folds).

Instead of prometheus-client's ``Counter``/``Histogram`` objects (a lock and
a ``labels()`` lookup per family per record), this class is itself a
collector: it takes a :class:`~.collector.Snapshot` of its state, and the
:class:`~.collector.SnapshotCollector` it inherits turns one into
prometheus-client families (:meth:`collect`) or straight into the exposition
(:meth:`expose`, what /metrics uses). So the class is the three parts the
design asks for: the spec table (:mod:`.families`), the aggregator (here) and
the collector (:mod:`.collector`).

Threads: :meth:`observe`, the fast path and :meth:`expire` mutate and must be
called from one thread (the receiver's event loop), holding :attr:`lock`
around each message (the pipeline does); :meth:`collect` and :meth:`expose`
take the lock only to copy a snapshot (a few ms at the cap) and render
outside it, so a scrape sees whole messages and never stalls intake for
longer than the copy.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from ..records.events import (
    EngineStats,
    LogEvent,
    PromptChange,
    RequestEvent,
    Source,
    Unrecognised,
)
from ..records.reasons import UNRECOGNISED_REASONS
from .config import REQUEST_LABELS, SOURCE_LABELS, MetricsConfig
from .collector import Snapshot, SnapshotCollector
from .families import REQUEST_COUNTERS, REQUEST_HISTOGRAMS, HistogramSpec
from .labels import MAX_SERIES, LabelSpace
from .series import ENGINE_FIELDS, EngineSeries, LogSeries, PromptSeries, RequestSeries
from .table import RequestGroup, RequestTable

#: Distinct ``Unrecognised.reason`` values counted before the rest fold into
#: the overflow value. The normaliser's set is fixed (9 today); 32 guards the
#: counter against a producer that puts free text there.
MAX_UNRECOGNISED_REASONS = 32

#: Raw label tuples the fast path remembers (each with its label set) between
#: two expiry passes. A raw tuple is the record's status, path, model, method
#: and kubernetes bytes before cleaning; a fleet has a few per pod, so 16384
#: covers thousands of pods, while a path with a query string per request
#: cannot grow it without bound: when full it is emptied and refilled.
MAX_RAW_KEYS = 16384

#: The same cache's bound in bytes of the raw strings its keys hold (label
#: fields, the kubernetes map's bytes, the tag). The typed path admits
#: strings up to 4096 characters and kubernetes maps up to 16 KiB, so 16384
#: keys could otherwise pin ~900 MB (issue 10: 'every cache bounded in
#: bytes'); 32 MiB holds ~16k keys of a real pod's ~2 KiB map and stops
#: an attacker's long distinct values long before the memory budget. When a
#: new key would pass it, the cache is emptied and refilled, as at the count.
MAX_RAW_KEY_BYTES = 32 * 1024 * 1024

#: Bytes counted for each cached key beside its strings: the tuples and the
#: dict entry (measured with sys.getsizeof: ~150-250 bytes a key).
RAW_KEY_OVERHEAD = 256


def raw_key_size(key: tuple[Any, ...]) -> int:
    """What a fast-path cache key holds, in bytes (close enough): (label fields, kubernetes bytes, tag)
    from typed records, or (label values' and kubernetes map's bytes, tag) from the payload scanner."""
    tag = key[-1]
    size = RAW_KEY_OVERHEAD + (len(tag) if isinstance(tag, (str, bytes)) else 0)
    if len(key) == 2:
        return size + len(key[0])
    fields, block, _ = key
    return size + len(block) + sum(len(v) for v in fields if isinstance(v, str))


def _tuple_getter(indices: list[int]) -> Callable[[Any], tuple[Any, ...]]:
    """A C-speed ``obj -> tuple(obj[i] for i in indices)``, a tuple even for 0 or 1 index."""
    if not indices:
        return lambda obj: ()
    if len(indices) == 1:
        (i,) = indices
        return lambda obj: (obj[i],)
    return itemgetter(*indices)


class LLMMetrics(SnapshotCollector):
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
        self._pod = pod
        self._req_names = req + src + pod
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
        self._src_key = self._source_key(src)
        self._model_key: Callable[[str], tuple[str, ...]] = (lambda m: (m,)) if model else (lambda m: ())
        # (model, engine) or (engine,): one tuple per stats line, no branch.
        self._engine_key: Callable[[EngineStats], tuple[str, ...]] = (
            itemgetter(EngineStats._fields.index("model"), EngineStats._fields.index("engine")) if model
            else _tuple_getter([EngineStats._fields.index("engine")]))

        # The request families, from the spec tables, in groups that share a
        # label list: the first (primary) carries requests_total, the token
        # counters and the per-pod gauges with ``labels``; the histograms go
        # where their label list (``histogram_labels``, ``family_labels``) puts them.
        self.histograms: tuple[HistogramSpec, ...] = REQUEST_HISTOGRAMS
        bounds = [tuple(getattr(cfg, spec.buckets)) for spec in self.histograms]
        lists: dict[tuple[str, ...], list[int]] = {tuple(cfg.labels): []}
        for h, spec in enumerate(self.histograms):
            lists.setdefault(tuple(cfg.labels_of(spec.name)), []).append(h)
        self.groups: list[RequestGroup] = []
        for labels, hists in lists.items():
            g_req = tuple(n for n in labels if n in REQUEST_LABELS)
            g_src = tuple(n for n in labels if n in SOURCE_LABELS)
            names = g_req + g_src + pod
            name = "requests" if not self.groups else "requests:" + ",".join(names)
            self.groups.append(RequestGroup(
                name, names, len(g_req), hists, self.histograms, bounds,
                REQUEST_COUNTERS if not self.groups else (), self._request_key(g_req, g_src), RequestEvent._fields))
        self.primary = self.groups[0]
        self._requests = self.primary.store
        #: Histogram index -> (group index, index within the group).
        self._hist_at = {h: (g, j) for g, group in enumerate(self.groups) for j, h in enumerate(group.histograms)}
        self._bounds = bounds
        self._exemplars = cfg.exemplars
        #: Held around each message by the writer and around each snapshot by a scrape.
        self.lock = threading.Lock()
        #: Fast path: raw label tuple -> (its label set in each request group, folds to count
        #: per record, the label sets' rows); see MAX_RAW_KEYS.
        self.raw_keys: dict[tuple[Any, ...], tuple[tuple[RequestSeries, ...], tuple[str, ...], tuple[int, ...]]] = {}
        #: Bytes the keys of ``raw_keys`` hold (:func:`raw_key_size`), against ``max_raw_key_bytes``.
        self.raw_key_bytes = 0
        self.max_raw_key_bytes = MAX_RAW_KEY_BYTES
        self._max_series = cfg.max_series
        self._overflow = cfg.overflow_value

        self._logs: dict[tuple[Any, ...], LogSeries] = {}
        self._engines: dict[tuple[Any, ...], EngineSeries] = {}
        self._prompts: dict[tuple[Any, ...], PromptSeries] = {}

        #: Records by ``Unrecognised.reason``; the known reasons start at 0.
        self.unrecognised: Counter[str] = Counter({r: 0 for r in UNRECOGNISED_REASONS})
        #: Label sets removed by :meth:`expire`, all groups together.
        self.expired = 0
        #: GPU-memory reports so far; each report's number breaks timestamp ties by arrival.
        self.reports = 0
        # Expiry epochs: series store the epoch of their last update (an int
        # store, no clock read per record); expire() closes the current epoch
        # at ``now`` and remembers when each epoch ended.
        self._epoch = 0
        self._epoch_ends: dict[int, float] = {}

    def _source_key(self, src: tuple[str, ...]) -> Callable[[Source], tuple[Any, ...]]:
        """``source -> (its values of the src labels) + (its pod labels)``."""
        src_get = _tuple_getter([Source._fields.index(n) for n in src])
        if not self._pod:
            return src_get
        keys = tuple(self.config.pod_labels.values())

        def src_key(source: Source) -> tuple[Any, ...]:
            labels = source.labels or {}
            return src_get(source) + tuple(labels.get(k, "") for k in keys)

        return src_key

    def _request_key(self, req: tuple[str, ...], src: tuple[str, ...]) -> Callable[[RequestEvent], tuple[Any, ...]]:
        req_get = _tuple_getter([RequestEvent._fields.index(n) for n in req])
        src_key = self._source_key(src)
        return lambda event: req_get(event) + src_key(event.source)

    # -- the hot path ---------------------------------------------------------

    def observe(self, outcome: Any, now: float | None = None) -> None:
        """Count one normalised outcome. Never raises for any outcome the normaliser makes.

        ``now`` stands for the timestamp of a request record that has none
        (the pipeline passes the message's receive time; default ``time.time()``).
        """
        if type(outcome) is RequestEvent:
            self.observe_request(outcome, now)
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
            stamp = time.time() if now is None else now
            for i, v in enumerate(outcome[: len(ENGINE_FIELDS)]):
                if v is not None:
                    values[i] = v
                    eng.stamps[i] = stamp
        elif type(outcome) is PromptChange:
            key = self._model_key(outcome.model) + self._src_key(outcome.source)
            p = self._prompts.get(key)
            if p is None:
                p = self._admit(self._prompts, self._pod_names, self._pod_split, key, PromptSeries)
            p.touched = self._epoch
            p.changes += 1
            p.prompt_hash = outcome.prompt_hash
            p.stamp = time.time() if now is None else now
        elif type(outcome) is Unrecognised:
            reasons = self.unrecognised
            reason = outcome.reason
            if reason in reasons or len(reasons) < MAX_UNRECOGNISED_REASONS:
                reasons[reason] += 1
            else:
                reasons[self._overflow] += 1
        else:
            raise TypeError(f"not a normalised outcome: {type(outcome).__name__}")

    def observe_request(self, outcome: RequestEvent,
                        now: float | None = None) -> tuple[tuple[RequestSeries, ...], tuple[str, ...]]:
        """Count one request (:meth:`observe`); returns its label set in each request group and the
        labels its lookups folded (counted here once each), which the fast path repeats for later
        records of the same raw labels."""
        series, folds = self.resolve_request(outcome)
        overflow = self._space.overflow
        for name in folds:  # a record counts once per label it had folded, however many groups folded it
            overflow[name] += 1
        ts = outcome.timestamp
        if ts is None:
            ts = time.time() if now is None else now
        exemplars = self._exemplars and outcome.request_id
        for group, s in zip(self.groups, series):
            s.touched = self._epoch
            t = group.table
            row = s.row
            for j, (_, field, bounds, ex) in enumerate(group.plan):
                v = outcome[field]
                if v is not None:
                    i = bisect_left(bounds, v)
                    t.counts[j][row, i] += 1
                    t.sums[j][row] += v
                    if ex >= 0 and exemplars:
                        s.ex[ex][i] = (outcome.request_id, v, ts)
        group = self.primary
        t = group.table
        row = series[0].row
        t.requests[row] += 1
        if ts > t.last_ts[row]:
            t.last_ts[row] = ts
        for k, field in enumerate(group.counter_fields):
            v = outcome[field]
            if v is not None:
                t.counter_sums[k][row] += v
        v = outcome.gpu_memory_bytes
        if v is not None:
            self.reports += 1  # every report is numbered, in arrival order
            if ts >= t.gpu_ts[row]:  # the newest report wins, ties by arrival
                t.gpu[row] = v
                t.gpu_ts[row] = ts
                t.gpu_seq[row] = self.reports
        return series, folds

    def resolve_request(self, outcome: RequestEvent) -> tuple[tuple[RequestSeries, ...], tuple[str, ...]]:
        """The label set ``outcome`` counts in, per request group, admitting new ones, but counting
        nothing: the labels its lookups fold are returned for the caller to count with each record
        (:meth:`observe_request`; the fast path, after :meth:`has_room`)."""
        before: dict[str, int] | None = None
        series = []
        for group in self.groups:
            key = group.key(outcome)
            s = group.store.get(key)
            if s is None:
                if before is None:  # only a lookup that misses can fold
                    before = dict(self._space.overflow)
                s = self._admit_request(group, key)
            series.append(s)
        if before is None:
            return tuple(series), ()
        overflow = self._space.overflow
        folds = tuple(name for name, n in overflow.items() if n > before.get(name, 0))
        for name in folds:
            overflow[name] = before.get(name, 0)
        return tuple(series), folds

    def other_key(self, outcome: Any) -> tuple[dict[Any, Any], tuple[str, ...], tuple[Any, ...]] | None:
        """The store, label names and raw key :meth:`observe` files a log, vLLM or prompt outcome under
        (``None`` for anything else)."""
        kind = type(outcome)
        if kind is LogEvent:
            return self._logs, self._log_names, (outcome.level,) + self._src_key(outcome.source)
        if kind is EngineStats:
            return self._engines, self._engine_names, self._engine_key(outcome) + self._src_key(outcome.source)
        if kind is PromptChange:
            return self._prompts, self._pod_names, self._model_key(outcome.model) + self._src_key(outcome.source)
        return None

    def has_room(self, events: list[RequestEvent], others: int | list[Any] = 0) -> bool:
        """Whether the label sets of ``events`` can be admitted, in any order, with no cap folding any,
        together with ``others``: a number of records of any family, each assumed to bring a new label
        set with new values for every label name, or those records' outcomes (log, vLLM, prompt), whose
        own label values are then counted instead.

        Then the order in which they are admitted changes nothing (length
        and type folds do not depend on it), and the fast path may admit a
        message's new label sets before counting it column by column.
        """
        space, config = self._space, self.config
        new: dict[str, set[Any]] = {}
        count = others if isinstance(others, int) else 0
        extra: dict[int, int] = {id(g.store): len(events) for g in self.groups}
        if not isinstance(others, int):
            keys: dict[int, set[Any]] = {}
            for outcome in others:
                found = self.other_key(outcome)
                if found is None:
                    continue
                store, names, key = found
                if key not in store:
                    keys.setdefault(id(store), set()).add(key)
                for name, value in zip(names, key):
                    if not space.is_live(name, value):
                        new.setdefault(name, set()).add(value)
            extra.update((store, len(added)) for store, added in keys.items())
        stores = [g.store for g in self.groups] + [self._logs, self._engines, self._prompts]
        if any(len(store) + extra.get(id(store), 0) + count >= self._max_series for store in stores):
            return False
        for group in self.groups:
            for event in events:
                for name, value in zip(group.names, group.key(event)):
                    if not space.is_live(name, value):
                        new.setdefault(name, set()).add(value)
        names = {n for g in self.groups for n in g.names} | set(self._log_names) | set(self._engine_names)
        return all(space.live_count(name) + len(new.get(name, ())) + count < config.limit_for(name)
                   for name in names)

    # -- the slow path: a label tuple not seen before -------------------------

    def _fold(self, store: dict[tuple[Any, ...], Any], names: tuple[str, ...], raw: tuple[Any, ...]) -> tuple[str, ...]:
        key = self._space.fold(names, raw)
        if key not in store and len(store) >= self._max_series:
            key = (self._overflow,) * len(names)
            self._space.overflow[MAX_SERIES] += 1
        return key

    def _admit_request(self, group: RequestGroup, raw: tuple[Any, ...]) -> RequestSeries:
        key = self._fold(group.store, group.names, raw)
        s = group.store.get(key)
        if s is None:
            s = group.new_series(key, self._epoch)
            group.store[key] = s
            self._space.hold(group.names, key)
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
        stores: list[tuple[dict[tuple[Any, ...], Any], tuple[str, ...], RequestTable | None]] = [
            (group.store, group.names, group.table) for group in self.groups]
        stores += [(self._logs, self._log_names, None), (self._engines, self._engine_names, None),
                   (self._prompts, self._pod_names, None)]
        latest: dict[tuple[str, ...], int] = {}
        for store, _, _ in stores:
            for s in list(store.values()):
                if latest.get(s.group, -1) < s.touched:
                    latest[s.group] = s.touched
        dead = {g for g, epoch in latest.items() if ends.get(epoch, math.inf) <= cutoff}
        removed = 0
        gone: set[int] = set()
        if dead:
            for store, names, table in stores:
                for key, s in list(store.items()):
                    if s.group in dead:
                        del store[key]
                        self._space.release(names, key)
                        if table is not None:
                            table.release(s.row)
                            gone.add(id(s))
                        removed += 1
        if gone or any(hit[1] for hit in self.raw_keys.values()):
            # A raw tuple whose label set went is resolved afresh, and so is one that folded:
            # freed room under a cap may now admit it.
            self.raw_keys = {raw: hit for raw, hit in self.raw_keys.items()
                             if not hit[1] and not any(id(s) in gone for s in hit[0])}
            self.raw_key_bytes = sum(map(raw_key_size, self.raw_keys))
        # No surviving group's latest epoch ended before the cutoff, so these
        # are no longer needed.
        for epoch in [e for e, end in ends.items() if end <= cutoff]:
            del ends[epoch]
        self.expired += removed
        return removed

    # -- the collector -----------------------------------------------------------

    def snapshot(self, empty: bool = False) -> Snapshot:
        """A consistent copy of everything exposed, taken under :attr:`lock` (whole messages only)."""
        if empty:
            groups = [([], RequestTable(g.table.specs, g.table.bounds, g.table.counter_specs)) for g in self.groups]
            return Snapshot([], [], [], [], groups[0][1], {}, groups)
        with self.lock:
            groups = [([(s, s.key, [list(ex) for ex in s.ex]) for s in g.store.values()], g.table.snapshot())
                      for g in self.groups]
            engines = list(self._engines.values())
            prompts = list(self._prompts.values())
            return Snapshot(groups[0][0], [(s.key, s.count) for s in self._logs.values()],
                            [(s.key, list(s.values)) for s in engines],
                            [(s.key, s.changes, s.prompt_hash) for s in prompts],
                            groups[0][1], dict(self.unrecognised), groups, dict(self._space.overflow),
                            self.expired, [list(s.stamps) for s in engines], [s.stamp for s in prompts])
