"""Exactly once: duplicate detection, checkpoints that survive restarts, a duplicate store shared by replicas.

It sits on the pipeline's floor (it wraps the metrics sink and snapshots the
aggregates; it imports the bottom floor and :mod:`qwen_fluent.metrics`, never
the server) and the app wires it in (:class:`Reliability`).

- :class:`DuplicateWindow` (sans-IO) and :func:`message_digest`: what a retry
  looks like, remembered for a bounded time and count.
- :class:`DedupSink`: in front of the metrics sink; a duplicate is counted in
  ``qwen_fluent_duplicate_*_total``, not passed on, and acked.
- :class:`RedisStore`: the digest claimed in Redis (SET NX PX) so that exactly
  one replica counts a message; unreachable -> :class:`StoreUnavailable`, no ack.
- :class:`StateFile`, :class:`Checkpointer`: the aggregates, counters and window
  checkpointed atomically, restored at start; :meth:`Checkpointer.durable` is
  the group commit a server awaits before acking.

docs/reliability.md says what is guaranteed under which settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..forward.events import Message
from ..stats import ReceiverStats
from .collector import ReliabilityCollector
from .config import ReliabilityConfig
from .digest import message_digest, record_count
from .errors import ReliabilityError, StateCorrupt, StateError, StoreUnavailable
from .sink import DedupSink
from .state import Checkpointer, Parts, StateFile
from .stats import ReliabilityStats, process_start_time
from .store import RedisStore
from .window import DuplicateWindow

__all__ = [
    "Checkpointer",
    "DedupSink",
    "DuplicateWindow",
    "Parts",
    "RedisStore",
    "Reliability",
    "ReliabilityCollector",
    "ReliabilityConfig",
    "ReliabilityError",
    "ReliabilityStats",
    "StateCorrupt",
    "StateError",
    "StateFile",
    "StoreUnavailable",
    "message_digest",
    "process_start_time",
    "record_count",
]


class Reliability:
    """The pieces for one receiver, from its ``[reliability]`` config; the app calls, in order:
    :meth:`wrap` (the metrics sink), :meth:`restore` (before the listeners open), :meth:`start`,
    and :meth:`stop` (after the listeners closed: the last checkpoint has every acked message)."""

    def __init__(self, config: ReliabilityConfig, metrics: Any, receiver_stats: ReceiverStats) -> None:
        self.config = config
        self.stats = ReliabilityStats()
        dedup = config.dedup or bool(config.redis_url)
        self.window = DuplicateWindow(config.dedup_max_messages, config.dedup_window) if dedup else None
        self.store: RedisStore | None = None
        if config.redis_url:
            self.store = RedisStore(config.redis_url, prefix=config.redis_prefix, timeout=config.redis_timeout,
                                    on_error=self._store_error)
        self.checkpointer: Checkpointer | None = None
        if config.state_dir:
            file = StateFile(config.state_dir)
            file.prepare()
            self.checkpointer = Checkpointer(Parts(metrics, receiver_stats, self.stats, self.window), file,
                                             self.stats, interval=config.checkpoint_interval,
                                             commit_delay=config.group_commit_delay)
        window = self.window
        self.collector = ReliabilityCollector(
            self.stats, (lambda: len(window)) if window is not None else (lambda: 0),
            (lambda: dict(window.evicted)) if window is not None else dict, state=self.checkpointer is not None)

    def _store_error(self, cause: str) -> None:
        self.stats.store_errors[cause] += 1

    def wrap(self, sink: Callable[[Message], None]) -> Callable[[Message], None]:
        """``sink`` behind the duplicate check (or ``sink`` itself with duplicate detection off)."""
        if self.window is None:
            return sink
        return DedupSink(sink, self.window, self.stats, self.store)

    def restore(self) -> bool:
        """Restore the checkpoint of the state directory, if there is one (raises :class:`StateError`)."""
        return self.checkpointer is not None and self.checkpointer.restore()

    def start(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.start()

    async def stop(self) -> None:
        if self.checkpointer is not None:
            try:
                await self.checkpointer.close()
            except StateError:
                pass  # counted and logged; the previous checkpoint stays
        if self.store is not None:
            self.store.close()
