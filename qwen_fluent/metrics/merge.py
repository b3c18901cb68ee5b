"""Several workers' snapshots as one: what ``serve --workers N`` exposes on its single /metrics.

Each worker process aggregates the connections the kernel hands it
(SO_REUSEPORT) into its own :class:`~qwen_fluent.metrics.llm.LLMMetrics`; the
parent merges their :class:`~qwen_fluent.metrics.llm.Snapshot` objects at
scrape time into one snapshot of the same shape, which the parent's own
(idle) LLMMetrics, built from the same configuration, exposes. Each family
merges by its own rule:

- counters, histogram buckets, counts and sums, log lines, prompt changes,
  unrecognised records, label overflows, expired label sets: summed per label
  set (a label set is in the merge if any worker has it);
- ``last_request_timestamp_seconds``: the newest;
- ``gpu_memory_reported_bytes``: the report with the newest timestamp; a tie
  goes to the later report within a worker and to the later worker across
  workers (arrival order between processes is not known);
- vLLM gauges: per field, the value set last (each worker stamps it with its
  receive time); the system-prompt hash: the one set last;
- exemplars: per bucket, the one with the newest timestamp.

Summing is exact for counts; float sums add the workers' sums, each of which
is exact in its own order. Label caps and ``max_series`` hold per worker, so
the merged exposition has at most ``workers x max_series`` label sets per
group. Blocks of the exposition are cached per label set by the merger, so a
scrape formats numbers only, as with one worker.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .collector import Snapshot
from .llm import LLMMetrics
from .series import ExemplarSlot, RequestSeries
from .table import RequestTable


def _newest(a: ExemplarSlot, b: ExemplarSlot) -> ExemplarSlot:
    if a is None:
        return b
    if b is None:
        return a
    return b if (b[2] or 0.0) >= (a[2] or 0.0) else a


class SentSeries(NamedTuple):
    """What the merge needs of a worker's request label set: its row (the key travels beside it)."""

    row: int


def for_sending(snap: Snapshot) -> Snapshot:
    """``snap`` without the live series objects (they stay with the worker): rows, keys and exemplars only."""
    groups = [([(SentSeries(s.row), key, ex) for s, key, ex in series], table) for series, table in snap.groups]
    return snap._replace(requests=groups[0][0], groups=groups)


def merge(template: LLMMetrics, snaps: list[Snapshot]) -> Snapshot:
    """One snapshot of everything in ``snaps``, exposed by ``template`` (an LLMMetrics of the same config)."""
    groups = []
    for g, group in enumerate(template.groups):
        rows_of: dict[tuple[str, ...], int] = {}
        for snap in snaps:
            for _, key, _ in snap.groups[g][0]:
                if key not in rows_of:
                    rows_of[key] = len(rows_of)
        spec = group.table
        table = RequestTable(spec.specs, spec.bounds, spec.counter_specs)
        for _ in rows_of:  # rows 0..n-1, in key order: a new table has no freed rows
            table.add_row()
        exemplars: list[list[list[ExemplarSlot]]] = [[[None] * w for w in group.exemplar_widths]
                                                     for _ in range(len(rows_of))]
        gpu_best: dict[int, tuple[float, int, int, float]] = {}
        for w, snap in enumerate(snaps):
            series, part = snap.groups[g]
            if not series:
                continue
            src = np.fromiter((s.row for s, _, _ in series), np.intp, len(series))
            dst = np.fromiter((rows_of[key] for _, key, _ in series), np.intp, len(series))
            for j in range(len(table.counts)):
                np.add.at(table.counts[j], dst, part.counts[j][src])
                np.add.at(table.sums[j], dst, part.sums[j][src])
            for k in range(len(table.counter_sums)):
                np.add.at(table.counter_sums[k], dst, part.counter_sums[k][src])
            np.add.at(table.requests, dst, part.requests[src])
            np.maximum.at(table.last_ts, dst, part.last_ts[src])
            for (_, _, ex), row, srow in zip(series, dst.tolist(), src.tolist()):
                slots = exemplars[row]
                for e, worker_slots in enumerate(ex):
                    mine = slots[e]
                    for i, slot in enumerate(worker_slots):
                        if slot is not None:
                            mine[i] = _newest(mine[i], slot)
                value = float(part.gpu[srow])
                if value == value:  # not NaN: this label set has a report here
                    report = (float(part.gpu_ts[srow]), w, int(part.gpu_seq[srow]), value)
                    if report[:3] > gpu_best.get(row, (-np.inf, -1, -1, 0.0))[:3]:
                        gpu_best[row] = report
        seq = 0
        for row, (ts, _, _, value) in sorted(gpu_best.items(), key=lambda item: item[1][:3]):
            seq += 1  # renumbered in (timestamp, worker, worker's number) order: ties keep that order
            table.gpu[row] = value
            table.gpu_ts[row] = ts
            table.gpu_seq[row] = seq
        merged = [(RequestSeries(key, key[group.split:], 0, row, group.exemplar_widths), key, exemplars[row])
                  for key, row in rows_of.items()]
        groups.append((merged, table))

    logs: dict[tuple[str, ...], int] = {}
    engines: dict[tuple[str, ...], tuple[list[Any], list[float]]] = {}
    prompts: dict[tuple[str, ...], list[Any]] = {}
    unrecognised: dict[str, int] = {}
    overflow: dict[str, int] = {}
    expired = 0
    for snap in snaps:
        for key, count in snap.logs:
            logs[key] = logs.get(key, 0) + count
        for (key, values), stamps in zip(snap.engines, snap.engine_stamps):
            have = engines.setdefault(key, ([None] * len(values), [float("-inf")] * len(values)))
            for i, (value, stamp) in enumerate(zip(values, stamps)):
                if value is not None and stamp >= have[1][i]:
                    have[0][i] = value
                    have[1][i] = stamp
        for (key, changes, digest), stamp in zip(snap.prompts, snap.prompt_stamps):
            have = prompts.setdefault(key, [0, "", float("-inf")])
            have[0] += changes
            if stamp >= have[2]:
                have[1], have[2] = digest, stamp
        for reason, n in snap.unrecognised.items():
            unrecognised[reason] = unrecognised.get(reason, 0) + n
        for label, n in snap.overflow.items():
            overflow[label] = overflow.get(label, 0) + n
        expired += snap.expired
    return Snapshot(
        groups[0][0], list(logs.items()),
        [(key, values) for key, (values, _) in engines.items()],
        [(key, changes, digest) for key, (changes, digest, _) in prompts.items()],
        groups[0][1], unrecognised, groups, overflow, expired,
        [stamps for _, stamps in engines.values()], [stamp for _, _, stamp in prompts.values()])


class BlockCache:
    """Label blocks of merged request label sets, kept across scrapes (bounded: cleared when full).

    A merged snapshot's series are new objects every scrape; this hands each
    the block its key had last time, so that a scrape formats numbers only.
    """

    #: 4 request groups of max_series (2000) label sets from 4 workers stay
    #: well inside; a cleared cache only costs one scrape the block building.
    MAX_BLOCKS = 65536

    def __init__(self) -> None:
        self._blocks: dict[tuple[int, tuple[str, ...]], str] = {}

    def fill(self, snap: Snapshot) -> None:
        if len(self._blocks) > self.MAX_BLOCKS:
            self._blocks.clear()
        for g, (series, _) in enumerate(snap.groups):
            for s, key, _ in series:
                s.block = self._blocks.get((g, key))

    def keep(self, snap: Snapshot) -> None:
        for g, (series, _) in enumerate(snap.groups):
            for s, key, _ in series:
                if s.block is not None:
                    self._blocks[(g, key)] = s.block
