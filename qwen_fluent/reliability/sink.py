""":class:`DedupSink`: the sink in front of the metrics sink that lets a resent message through once.

For each message that asked for an ack (:func:`~.digest.message_digest`):

1. its digest in this receiver's window, from another connection: a
   duplicate. It is counted in ``qwen_fluent_duplicate_messages_total`` and
   ``qwen_fluent_duplicate_records_total`` and not passed on; the sink returns
   normally, so the server acks it again, which is what the client waits for.
2. with a shared store, the digest is claimed there; a claim that another
   replica holds is a duplicate as above. A store that does not answer raises
   :class:`~.errors.StoreUnavailable`: no count, no ack, the client resends.
3. otherwise the message goes to the inner sink; only when that returned is
   the digest added to the window (a message the inner sink refused was not
   counted, so its resend must be). A refused message's store claim is released.

Connections are told apart by ``message.connection`` when the Forward core
provides one (an id unique within the process), combined with a random
number drawn at start so that ids of a previous run (in a restored window) or
of another replica never match. Without it every repeat within the window is
a duplicate (see docs/reliability.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable

from ..forward.events import Message
from .digest import message_digest, record_count
from .stats import ReliabilityStats
from .store import RedisStore
from .window import DuplicateWindow


class DedupSink:
    """``sink(message)``: apply ``inner(message)`` unless the message is a duplicate; see the module doc."""

    __slots__ = ("boot", "clock", "inner", "on_applied", "stats", "store", "window")

    def __init__(self, inner: Callable[[Message], None], window: DuplicateWindow, stats: ReliabilityStats,
                 store: RedisStore | None = None, clock: Callable[[], float] = time.time,
                 on_applied: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.window = window
        self.stats = stats
        self.store = store
        self.clock = clock
        #: This run's random id: connection numbers restart at every start and differ per replica.
        self.boot = int.from_bytes(os.urandom(8), "big")
        #: Called after each message is applied (the checkpointer's "something changed").
        self.on_applied = on_applied

    def origin(self, message: Message) -> Hashable | None:
        connection = getattr(message, "connection", None)
        return None if connection is None else (self.boot, connection)

    def __call__(self, message: Message) -> None:
        digest = message_digest(message)
        if digest is None:
            self.inner(message)
            if self.on_applied is not None:
                self.on_applied()
            return
        now = self.clock()
        origin = self.origin(message)
        if self.window.is_duplicate(digest, now, origin):
            self._duplicate(message, "window")
            return
        store = self.store
        token = b""
        if store is not None:
            # A token per connection; with connections unknown, one per message, so only an identical token
            # (the same connection) ever counts as a repeat rather than a retry.
            token = (f"{origin[0]:x}:{origin[1]}" if origin is not None else os.urandom(12).hex()).encode()
            if not store.claim(digest, token, self.window.max_age):
                self.window.add(digest, now, None)  # later copies here are recognised without a round trip
                self._duplicate(message, "shared_store")
                return
        try:
            self.inner(message)
        except BaseException:
            if store is not None:
                store.release(digest, token)
            raise
        self.window.add(digest, now, origin)
        if self.on_applied is not None:
            self.on_applied()

    def _duplicate(self, message: Message, source: str) -> None:
        self.stats.duplicate_messages[source] += 1
        self.stats.duplicate_records[source] += record_count(message)
