"""Sampled log lines: the first few of each kind, then one per interval saying how many were left out.

A counter says how many times something happened; a log line says which one.
Where a peer or an input can make the same event thousands of times a second
(1000 refused connections, a Fluent Bit forwarding a whole unparsed log), one
line per event floods the log and costs more than the event. :class:`LogSampler`
keeps the first :attr:`~LogSampler.first` lines of each kind (enough to see
the variety at start-up), then at most one every :attr:`~LogSampler.interval`
seconds per kind, which carries the count of the lines left out since the
last one. The counters stay exact; only the log is sampled.

Bounded: two small dicts keyed by kind, at most ``max_kinds`` kinds (further
kinds share one slot, ``(other)``). The kinds in use are closed sets of
reasons (forward errors, unrecognised-record reasons), far below the bound.
"""

from __future__ import annotations

import time
from typing import Callable

#: The kind that kinds past ``max_kinds`` share.
OTHER = "(other)"


class LogSampler:
    """``sampler(kind)``: ``None`` to leave this line out, else ``(kind, suffix)``.

    The kind returned is the one to print (:data:`OTHER` past ``max_kinds``); the suffix, often
    empty, says how many lines of this kind were left out, or that sampling starts now.
    """

    __slots__ = ("first", "interval", "max_kinds", "_seen", "_next", "_skipped", "_clock")

    def __init__(self, first: int = 5, interval: float = 60.0, max_kinds: int = 32,
                 clock: Callable[[], float] = time.monotonic) -> None:
        #: Lines logged per kind before sampling starts.
        self.first = first
        #: Seconds between two sampled lines per kind afterwards (a minute: an alert on the
        #: counter fires on the scale of minutes too).
        self.interval = interval
        self.max_kinds = max_kinds
        self._seen: dict[str, int] = {}
        self._next: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._clock = clock

    @property
    def kinds(self) -> int:
        """Kinds tracked now (at most ``max_kinds``, plus the shared :data:`OTHER`)."""
        return len(self._seen)

    def __call__(self, kind: str) -> tuple[str, str] | None:
        if kind not in self._seen and len(self._seen) >= self.max_kinds:
            kind = OTHER
        seen = self._seen.get(kind, 0)
        self._seen[kind] = seen + 1
        if seen >= self.first:
            now = self._clock()
            if now < self._next.get(kind, 0.0):
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return None
            self._next[kind] = now + self.interval
        elif seen == self.first - 1:
            self._next[kind] = self._clock() + self.interval
        skipped = self._skipped.pop(kind, 0)
        suffix = f" ({skipped} more since the last line)" if skipped else ""
        if seen == self.first - 1:
            suffix += f"; from now on at most one line every {self.interval:g} s for this reason"
        return kind, suffix
