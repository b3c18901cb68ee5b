"""Counters of the exactly-once machinery: plain integers, bumped on the event loop, read at scrape time.

Kept apart from :class:`~qwen_fluent.stats.ReceiverStats` (the server's) so
that this package adds families without touching the server's; both are
checkpointed and restored together (:mod:`.state`).
"""

from __future__ import annotations

import time
from collections import Counter

#: Where a duplicate was recognised: this receiver's window, or the shared store (another replica applied it).
DUPLICATE_SOURCES = ("window", "shared_store")
#: Why the shared store could not answer (``duplicate_store_errors_total{reason}``).
STORE_ERRORS = ("connection", "timeout", "error", "backing_off")
#: Checkpoint outcomes.
CHECKPOINT_OUTCOMES = ("written", "failed")


def process_start_time() -> float:
    """When this process started, seconds since the epoch (Linux: from /proc; elsewhere: first call).

    ``process_start_time_seconds``, as prometheus-client's process collector
    reads it: the process's start in clock ticks after boot plus the boot time.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5); fields here start at field 3
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    import os

                    return float(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    return _FIRST_CALL


_FIRST_CALL = time.time()


class ReliabilityStats:
    """Duplicates, store errors and checkpoints; ``counters_start`` is when the counters began at zero.

    ``counters_start`` is this process's start unless a checkpoint restored
    the counters, which carries the first start forward: a scrape that sees
    it change knows the counters restarted from zero.
    """

    __slots__ = (
        "checkpoints",
        "counters_start",
        "duplicate_messages",
        "duplicate_records",
        "last_checkpoint",
        "restored_from",
        "store_errors",
    )

    def __init__(self) -> None:
        self.duplicate_messages: Counter[str] = Counter()  # by DUPLICATE_SOURCES
        self.duplicate_records: Counter[str] = Counter()
        self.store_errors: Counter[str] = Counter()  # by STORE_ERRORS
        self.checkpoints: Counter[str] = Counter()  # by CHECKPOINT_OUTCOMES
        self.counters_start = process_start_time()
        #: Wall-clock time of the last checkpoint on disk (0: none yet).
        self.last_checkpoint = 0.0
        #: Wall-clock time of the checkpoint restored at start (0: none).
        self.restored_from = 0.0

    #: What a checkpoint carries (the rest describes this process).
    SAVED = ("duplicate_messages", "duplicate_records", "store_errors", "checkpoints", "counters_start")

    def state(self) -> dict[str, object]:
        return {name: (dict(v) if isinstance(v, Counter) else v)
                for name in self.SAVED for v in (getattr(self, name),)}

    def restore(self, state: dict[str, object]) -> None:
        for name in self.SAVED:
            if name not in state:
                continue
            value = state[name]
            mine = getattr(self, name)
            if isinstance(mine, Counter) and isinstance(value, dict):
                mine.update({str(k): int(n) for k, n in value.items()})
            elif name == "counters_start" and isinstance(value, (int, float)):
                self.counters_start = float(value)
