"""The duplicate window: digests of recently applied messages, bounded by count and by age. Sans-IO.

:class:`DuplicateWindow` never reads a clock or touches a socket: the caller
passes ``now`` (seconds, the same clock every time; the receiver passes
``time.time()`` so that a window restored from a checkpoint keeps its ages
across a restart). It holds, per digest, when it was applied and its
*origin*, an opaque value naming the connection it came on.

The origin is what tells a retry from a repeat. A client resends a chunk only
after the connection it first sent it on failed (Fluent Bit and Fluentd both
drop the connection when an ack does not come), so the same digest on
**another** connection is a retry and a duplicate, while the same digest on
the **same** connection is a new message that happens to carry the same
records (two identical log lines with second-resolution times, in Message
mode with Fluent Bit's constant chunk id). An origin of ``None`` (the caller
cannot tell connections apart) matches everything: then every repeat within
the window is taken for a duplicate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from typing import NamedTuple


class Seen(NamedTuple):
    """When a digest was applied, and on which connection (``None``: unknown)."""

    at: float
    origin: Hashable | None


class DuplicateWindow:
    """``is_duplicate(digest, now, origin)`` before applying a message, ``add(...)`` after.

    Bounded twice, both checked at every :meth:`add`: at most
    ``max_messages`` digests (the oldest goes first), and none older than
    ``max_age`` seconds (an old digest is dropped when met, and the oldest are
    dropped as new ones come). Memory is about 300 bytes per digest.
    ``evicted`` counts digests dropped by each bound.

    Layout: a plain dict (digest -> :class:`Seen`, in application order) and a
    deque of ``(digest, time)`` in the same order that eviction pops from the
    left. A digest applied again is moved to the end of both; its old deque
    entry is skipped when met (its time no longer matches). A plain dict, not
    an ``OrderedDict``, because a checkpoint copies the window on the event
    loop, and copying a dict of 100k digests is several times faster.
    """

    __slots__ = ("_order", "_seen", "evicted", "max_age", "max_messages")

    def __init__(self, max_messages: int, max_age: float) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        if not max_age > 0:
            raise ValueError(f"max_age must be more than 0, got {max_age}")
        self.max_messages = max_messages
        self.max_age = max_age
        #: digest -> Seen, oldest application first.
        self._seen: dict[bytes, Seen] = {}
        #: (digest, time applied) in application order; entries of re-applied digests go stale.
        self._order: deque[tuple[bytes, float]] = deque()
        self.evicted = {"count": 0, "age": 0}

    def __len__(self) -> int:
        return len(self._seen)

    def is_duplicate(self, digest: bytes, now: float, origin: Hashable | None = None) -> bool:
        """Whether ``digest`` was applied within ``max_age`` from a connection other than ``origin``."""
        seen = self._seen.get(digest)
        if seen is None:
            return False
        if now - seen.at > self.max_age:
            del self._seen[digest]  # its deque entry goes stale
            self.evicted["age"] += 1
            return False
        return origin is None or seen.origin is None or seen.origin != origin

    def add(self, digest: bytes, now: float, origin: Hashable | None = None) -> None:
        """Remember that ``digest`` was applied at ``now`` on ``origin``, then enforce both bounds."""
        seen = self._seen
        if digest in seen:
            del seen[digest]  # re-inserted below: the newest again
        seen[digest] = Seen(now, origin)
        self._order.append((digest, now))
        self.expire(now)
        while len(seen) > self.max_messages:
            self._pop_oldest()
            self.evicted["count"] += 1
        if len(self._order) > 2 * self.max_messages + 64:  # many stale entries: rebuild (rare)
            self._order = deque((d, s.at) for d, s in seen.items())

    def _pop_oldest(self) -> Seen | None:
        """Remove the oldest live digest; ``None`` when empty."""
        seen, order = self._seen, self._order
        while order:
            digest, at = order.popleft()
            live = seen.get(digest)
            if live is not None and live.at == at:
                del seen[digest]
                return live
        return None

    def discard(self, digest: bytes) -> None:
        """Forget ``digest`` (its message was not applied after all)."""
        self._seen.pop(digest, None)

    def expire(self, now: float) -> int:
        """Drop the digests older than ``max_age``, oldest first; returns how many.

        Times are those passed to :meth:`add`, which the receiver's clock
        makes non-decreasing; a clock stepped back keeps some digests longer,
        never shorter, than ``max_age`` (the count bound still holds).
        """
        seen, order = self._seen, self._order
        cutoff = now - self.max_age
        dropped = 0
        while order and order[0][1] < cutoff:
            digest, at = order.popleft()
            live = seen.get(digest)
            if live is not None and live.at == at:
                del seen[digest]
                dropped += 1
        self.evicted["age"] += dropped
        return dropped

    def items(self) -> Iterator[tuple[bytes, Seen]]:
        """Every remembered digest, oldest first (a copy: safe while the window changes)."""
        return iter(list(self._seen.items()))

    def copy(self) -> dict[bytes, Seen]:
        """The digests, oldest first, as a new dict: what a checkpoint takes on the event loop (one C-level copy)."""
        return self._seen.copy()

    def load(self, items: list[tuple[bytes, float, Hashable | None]], now: float) -> int:
        """Restore digests from a checkpoint (oldest first); those already too old are left out.

        Returns how many were kept. Bounds hold: a window restored with a
        smaller ``max_messages`` keeps the newest.
        """
        for digest, at, origin in items:
            if now - at <= self.max_age:
                self.add(bytes(digest), float(at), origin)
        return len(self._seen)
