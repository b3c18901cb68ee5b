"""Checkpoints: the aggregates and the duplicate window on disk, restored at start.

What a checkpoint holds, version 1 (a msgpack map, see :func:`capture`):

- ``metrics``: the :class:`~qwen_fluent.metrics.LLMMetrics` state as a
  scrape's :class:`~qwen_fluent.metrics.collector.Snapshot` sees it, the
  representation ``serve --workers`` already ships between processes: per
  request group its label sets (keys), the rows of every table column for
  them (histogram buckets, sums, counters, last-request and GPU-report
  columns, as raw little-endian arrays) and their exemplars; the log, vLLM and
  prompt label sets; unrecognised, label-overflow and expiry counts. With it a
  ``fingerprint`` of the label and bucket layout: a checkpoint written under
  other ``[metrics]`` labels or buckets cannot be poured into these families,
  so its metrics part is left out (logged; ``counters_start`` then moves).
- ``receiver``: :class:`~qwen_fluent.stats.ReceiverStats`' counters (not the
  open-connections gauge).
- ``reliability``: the duplicate counters and ``counters_start``.
- ``window``: the remembered digests with their times and origins, as columns
  (:func:`capture_window`).

The file (:class:`StateFile`) is ``MAGIC``, the format version, the body's
length and its BLAKE2b-256, then the body: written to a temporary file in the
same directory, fsynced, renamed over the old one, and the directory fsynced,
so a crash at any point leaves the old checkpoint or the new one, whole. A
file that fails its length or digest is :class:`~.errors.StateCorrupt`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from ..metrics import LLMMetrics
from ..metrics.series import EngineSeries, LogSeries, PromptSeries
from ..stats import ReceiverStats
from .digest import DIGEST_SIZE
from .errors import StateCorrupt, StateError
from .stats import ReliabilityStats
from .window import DuplicateWindow

log = logging.getLogger("qwen_fluent.reliability")

#: File name of the checkpoint in the state directory.
FILE_NAME = "state.qfs"
MAGIC = b"QFSTATE\0"
#: The body's format. A reader refuses a version it does not know (StateCorrupt names it).
VERSION = 1
_HEADER = struct.Struct(">8sHQ32s")  # magic, version, body length, BLAKE2b-256 of the body
#: The largest body read back: 2000 label sets per group with ~100 buckets
#: each and 100k digests are a few MB; 1 GiB means a file that is not ours.
MAX_BODY = 1 << 30


# -- the metrics --------------------------------------------------------------------------------------

def fingerprint(metrics: LLMMetrics) -> list[Any]:
    """The label and bucket layout: checkpoints restore only into the same layout."""
    return [metrics.config.namespace,
            [[list(g.names), [list(map(float, b)) for b in g.table.bounds], [s.name for s in g.table.specs],
              [c.name for c in g.table.counter_specs]] for g in metrics.groups],
            list(metrics._log_names), list(metrics._engine_names), list(metrics._pod_names)]


def _array(a: np.ndarray) -> list[Any]:
    a = np.ascontiguousarray(a)
    return [a.dtype.str, list(a.shape), a.tobytes()]


def _from_array(v: list[Any]) -> np.ndarray:
    dtype, shape, data = v
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def _table_columns(table: Any) -> list[tuple[str, int | None]]:
    cols: list[tuple[str, int | None]] = [("counts", i) for i in range(len(table.counts))]
    cols += [("sums", i) for i in range(len(table.sums))]
    cols += [("counter_sums", i) for i in range(len(table.counter_sums))]
    cols += [("requests", None), ("last_ts", None), ("gpu", None), ("gpu_ts", None), ("gpu_seq", None)]
    return cols


def _column(table: Any, attr: str, i: int | None) -> np.ndarray:
    return getattr(table, attr) if i is None else getattr(table, attr)[i]


def capture_metrics(metrics: LLMMetrics) -> dict[str, Any]:
    """The metrics part of a checkpoint, from one consistent snapshot (taken under the metrics lock)."""
    snap = metrics.snapshot()
    groups = []
    for series, table in snap.groups:
        rows = np.fromiter((s.row for s, _, _ in series), np.intp, len(series))
        groups.append({
            "keys": [list(key) for _, key, _ in series],
            "columns": [_array(_column(table, attr, i)[rows]) for attr, i in _table_columns(table)],
            "exemplars": [[[list(slot) if slot is not None else None for slot in ex] for ex in exs]
                          for _, _, exs in series],
        })
    return {
        "fingerprint": fingerprint(metrics),
        "groups": groups,
        "logs": [[list(key), count] for key, count in snap.logs],
        "engines": [[list(key), list(values), list(stamps)]
                    for (key, values), stamps in zip(snap.engines, snap.engine_stamps)],
        "prompts": [[list(key), changes, digest, stamp]
                    for (key, changes, digest), stamp in zip(snap.prompts, snap.prompt_stamps)],
        "unrecognised": dict(snap.unrecognised),
        "overflow": dict(snap.overflow),
        "expired": snap.expired,
        "reports": metrics.reports,
    }


def restore_metrics(metrics: LLMMetrics, state: dict[str, Any]) -> bool:
    """Pour a checkpoint's metrics part into ``metrics`` (fresh, not yet counting); ``False`` if the
    layout differs (nothing restored). Restored label sets count as updated now for expiry."""
    if state.get("fingerprint") != fingerprint(metrics):
        return False
    space = metrics._space
    epoch = metrics._epoch
    with metrics.lock:
        for group, saved in zip(metrics.groups, state["groups"]):
            table = group.table
            cols = [_from_array(v) for v in saved["columns"]]
            for i, key_list in enumerate(saved["keys"]):
                key = tuple(key_list)
                s = group.store.get(key)
                if s is None:
                    s = group.new_series(key, epoch)
                    group.store[key] = s
                    space.hold(group.names, key)
                for (attr, j), col in zip(_table_columns(table), cols):
                    _column(table, attr, j)[s.row] = col[i]
                s.ex = [[tuple(slot) if slot is not None else None for slot in ex] for ex in saved["exemplars"][i]]
        for key_list, count in state["logs"]:
            key = tuple(key_list)
            s = LogSeries(key, key[1:], epoch)
            s.count = int(count)
            metrics._logs[key] = s
            space.hold(metrics._log_names, key)
        for key_list, values, stamps in state["engines"]:
            key = tuple(key_list)
            e = EngineSeries(key, key[metrics._engine_split:], epoch)
            e.values = list(values)
            e.stamps = [float(x) for x in stamps]
            metrics._engines[key] = e
            space.hold(metrics._engine_names, key)
        for key_list, changes, digest, stamp in state["prompts"]:
            key = tuple(key_list)
            p = PromptSeries(key, key[metrics._pod_split:], epoch)
            p.changes, p.prompt_hash, p.stamp = int(changes), str(digest), float(stamp)
            metrics._prompts[key] = p
            space.hold(metrics._pod_names, key)
        metrics.unrecognised.update({str(k): int(n) for k, n in state["unrecognised"].items()})
        space.overflow.update({str(k): int(n) for k, n in state["overflow"].items()})
        metrics.expired += int(state["expired"])
        metrics.reports += int(state["reports"])
    return True


# -- the receiver's counters --------------------------------------------------------------------------

#: ReceiverStats fields that describe this process, not a running total.
_NOT_TOTALS = frozenset({"connections_active"})


def capture_receiver(stats: ReceiverStats) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(stats).__slots__:
        if name in _NOT_TOTALS:
            continue
        value = getattr(stats, name)
        out[name] = dict(value) if isinstance(value, Counter) else value
    return out


def restore_receiver(stats: ReceiverStats, state: dict[str, Any]) -> None:
    """Add the saved totals to ``stats``; fields this version does not have are ignored."""
    names = set(type(stats).__slots__) - _NOT_TOTALS
    for name, value in state.items():
        if name not in names:
            continue
        mine = getattr(stats, name)
        if isinstance(mine, Counter) and isinstance(value, dict):
            mine.update({str(k): int(n) for k, n in value.items()})
        elif isinstance(mine, (int, float)) and isinstance(value, (int, float)):
            setattr(stats, name, mine + value)


# -- the duplicate window -----------------------------------------------------------------------------

class WindowCopy:
    """A copy of the window's digests taken on the event loop (:meth:`DuplicateWindow.copy`, one C-level
    dict copy); turned into columns by :func:`capture_window` when the checkpoint is encoded, in the
    writer's thread, so the loop never walks 100k digests."""

    __slots__ = ("seen",)

    def __init__(self, seen: dict[bytes, Any]) -> None:
        self.seen = seen


def _encode_default(obj: Any) -> Any:
    """msgpack's hook for the one non-msgpack value a captured state holds."""
    if isinstance(obj, WindowCopy):
        return capture_window(obj)
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def capture_window(window: DuplicateWindow | WindowCopy | None) -> dict[str, Any]:
    """The window as columns: digests joined, times as float64, origins as indexes into their distinct list.

    Columns, not a list per digest: smaller, and decoded without building a
    list per digest. Origins are few (one per connection seen in the window).
    """
    if window is None:
        items: list[tuple[bytes, Any]] = []
    elif isinstance(window, WindowCopy):
        items = list(window.seen.items())
    else:
        items = list(window.items())
    distinct: dict[Any, int] = {}
    index = np.fromiter((distinct.setdefault(s.origin, len(distinct)) for _, s in items), np.uint32, len(items))
    return {
        "size": DIGEST_SIZE,
        "digests": b"".join(d for d, _ in items),
        "times": _array(np.fromiter((s.at for _, s in items), np.float64, len(items))),
        "origins": [list(o) if isinstance(o, tuple) else o for o in distinct],
        "origin_of": _array(index),
    }


def restore_window(saved: dict[str, Any]) -> list[tuple[bytes, float, Any]]:
    """The (digest, time, origin) triples of :func:`capture_window`'s columns, oldest first."""
    size, digests = int(saved["size"]), saved["digests"]
    times = _from_array(saved["times"]).tolist()
    origins = [tuple(o) if isinstance(o, list) else o for o in saved["origins"]]
    index = _from_array(saved["origin_of"]).tolist()
    return [(digests[i * size:(i + 1) * size], times[i], origins[index[i]]) for i in range(len(times))]


# -- the whole checkpoint -----------------------------------------------------------------------------

class Parts:
    """What one checkpoint covers: the receiver's aggregates, counters and duplicate window."""

    def __init__(self, metrics: LLMMetrics, receiver: ReceiverStats, reliability: ReliabilityStats,
                 window: DuplicateWindow | None) -> None:
        self.metrics = metrics
        self.receiver = receiver
        self.reliability = reliability
        self.window = window

    def capture(self, now: float) -> dict[str, Any]:
        """Everything, at one instant (call on the thread that counts: no message is half applied)."""
        window = self.window
        return {
            "saved": now,
            "metrics": capture_metrics(self.metrics),
            "receiver": capture_receiver(self.receiver),
            "reliability": self.reliability.state(),
            "window": WindowCopy(window.copy()) if window is not None else capture_window(None),
        }

    def restore(self, state: dict[str, Any], now: float) -> None:
        """Restore a checkpoint into fresh parts; a metrics part of another layout is skipped (logged)."""
        if restore_metrics(self.metrics, state["metrics"]):
            self.reliability.restore(state["reliability"])
        else:
            log.warning("the checkpoint's metrics were written with other [metrics] labels or buckets; "
                        "those families start from zero (qwen_fluent_counters_start_time_seconds moves)")
            self.reliability.restore({k: v for k, v in state["reliability"].items() if k != "counters_start"})
        restore_receiver(self.receiver, state["receiver"])
        self.reliability.restored_from = float(state["saved"])
        if self.window is not None:
            saved = state["window"]
            if isinstance(saved, WindowCopy):  # restored without a trip through the file
                saved = capture_window(saved)
            self.window.load(restore_window(saved), now)


class StateFile:
    """The checkpoint file in a state directory: :meth:`write` atomically, :meth:`read` checked."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)

    def prepare(self) -> None:
        """Create the directory if needed and check it is writable (a StateError says what is wrong)."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.directory!r}: {exc.strerror}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StateError(f"the state directory {self.directory!r} is not writable by this user")

    @staticmethod
    def encode(state: dict[str, Any]) -> bytes:
        body = msgpack.packb(state, use_bin_type=True, default=_encode_default)
        return _HEADER.pack(MAGIC, VERSION, len(body), hashlib.blake2b(body, digest_size=32).digest()) + body

    def write(self, state: dict[str, Any]) -> int:
        """Write ``state`` durably (temp file, fsync, rename, fsync of the directory); returns its size."""
        data = self.encode(state)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return len(data)

    def read(self) -> dict[str, Any] | None:
        """The checkpoint, or ``None`` when there is none; :class:`StateCorrupt` for one that is not whole."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    raise self._corrupt("it is shorter than its header")
                magic, version, length, digest = _HEADER.unpack(head)
                if magic != MAGIC:
                    raise self._corrupt("it is not a qwen-fluent checkpoint")
                if version != VERSION:
                    raise self._corrupt(f"it is format version {version}; this qwen-fluent reads version {VERSION}")
                if length > MAX_BODY:
                    raise self._corrupt(f"its header claims {length} bytes")
                body = f.read(length + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the checkpoint {self.path!r}: {exc.strerror}") from None
        if len(body) != length or hashlib.blake2b(body, digest_size=32).digest() != digest:
            raise self._corrupt("its length or checksum does not match (a truncated or damaged file)")
        state = msgpack.unpackb(body, raw=False, strict_map_key=False)
        if not isinstance(state, dict) or not {"saved", "metrics", "receiver", "reliability", "window"} <= set(state):
            raise self._corrupt("it lacks parts of a checkpoint")
        return state

    def _corrupt(self, why: str) -> StateCorrupt:
        return StateCorrupt(f"the checkpoint {self.path!r} cannot be restored: {why}. Move it away to start "
                            f"the counters from zero")


class Checkpointer:
    """Periodic and on-demand checkpoints of :class:`Parts` into a :class:`StateFile`, on an event loop.

    The state is captured on the loop (the thread that counts, so no message
    is half applied) and written in a worker thread (the fsync does not stall
    intake). One write at a time; a checkpoint asked for while one is being
    written waits for the next.

    **Group commit** (:meth:`durable`): the future it returns is resolved once
    a checkpoint captured after the call is on disk. A server that acks a
    message only when the future for it resolved acks nothing that a crash
    could take back. Calls within ``commit_delay`` share one checkpoint and
    one fsync; futures resolve in call order, so acks stay in order per
    connection. A failed write fails the futures with the :class:`StateError`
    (the server then closes without acks: the client resends).
    """

    def __init__(self, parts: Parts, file: StateFile, stats: ReliabilityStats, *, interval: float,
                 commit_delay: float = 0.02, clock: Callable[[], float] = time.time) -> None:
        self.parts = parts
        self.file = file
        self.stats = stats
        self.interval = interval
        self.commit_delay = commit_delay
        self.clock = clock
        self._lock: asyncio.Lock | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._commit: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending_commit: asyncio.Task[None] | None = None
        #: Bytes of the last checkpoint and seconds its write took (for logs and benchmarks).
        self.last_size = 0
        self.last_seconds = 0.0

    def restore(self) -> bool:
        """Restore the checkpoint on disk, if any, into the (fresh) parts; ``True`` if one was restored."""
        state = self.file.read()
        if state is None:
            return False
        self.parts.restore(state, self.clock())
        log.info("restored the counters from %s (saved %.1f s ago)", self.file.path,
                 self.clock() - float(state["saved"]))
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._periodic())

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.checkpoint()
            except StateError:
                pass  # counted and logged by checkpoint(); the next interval tries again

    async def checkpoint(self) -> None:
        """Capture now and write; raises :class:`StateError` if the write failed (also counted and logged)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            waiters, self._waiters = self._waiters, []
            started = time.perf_counter()
            try:
                state = self.parts.capture(self.clock())
                self.last_size = await asyncio.to_thread(self.file.write, state)
            except Exception as exc:
                self.stats.checkpoints["failed"] += 1
                if isinstance(exc, OSError):
                    error = StateError(f"cannot write the checkpoint {self.file.path!r}: {exc.strerror or exc}")
                    log.warning("%s", error)
                else:
                    error = StateError(f"cannot checkpoint to {self.file.path!r}: {type(exc).__name__}: {exc}")
                    log.exception("%s", error)
                for w in waiters:
                    if not w.done():
                        w.set_exception(error)
                raise error from None
            self.last_seconds = time.perf_counter() - started
            self.stats.checkpoints["written"] += 1
            self.stats.last_checkpoint = float(state["saved"])
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def durable(self) -> asyncio.Future[None]:
        """A future resolved when everything applied before this call is in a checkpoint on disk."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        if self._commit is None:
            self._commit = loop.call_later(self.commit_delay, self._group_commit)
        return future

    def _group_commit(self) -> None:
        self._commit = None
        self._pending_commit = asyncio.get_running_loop().create_task(self._commit_quietly())

    async def _commit_quietly(self) -> None:
        try:
            await self.checkpoint()
        except StateError:
            pass  # the waiters got the error
        if self._waiters and self._commit is None:  # arrived while writing: the next group
            self._commit = asyncio.get_running_loop().call_later(self.commit_delay, self._group_commit)

    async def close(self) -> None:
        """Stop the periodic checkpoints and write the last one (graceful stop)."""
        if self._task is not None:
            self._task.cancel()
        if self._commit is not None:
            self._commit.cancel()
            self._commit = None
        if self._pending_commit is not None:
            try:
                await self._pending_commit
            except StateError:
                pass
        await self.checkpoint()
