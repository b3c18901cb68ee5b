"""The receiver's own counters: plain integers in dictionaries.

The asyncio server and the record pipeline bump these in the hot path (a dict
increment costs tens of nanoseconds; a prometheus-client ``Counter.inc`` with
labels costs a microsecond or more). A custom collector in
:mod:`qwen_fluent.metrics` reads them at scrape time and exposes them as the
``qwen_fluent_*`` families. Every key set here is fixed and small, so the
label sets they become are bounded.

This module sits on the bottom floor and imports nothing of ours: the server
writes these counters and :mod:`qwen_fluent.metrics` reads them, and metrics
must never import the server (layers follow the data; see tests/test_layers.py).
"""

from __future__ import annotations

from collections import Counter


class ReceiverStats:
    """Counters for everything the receiver takes in, accepts, or refuses.

    ``records`` is keyed by outcome: ``accepted`` (became a metric),
    ``unrecognised`` (a record we could not classify), ``invalid`` (a
    malformed entry inside a well-formed message), ``skipped_signal`` (metrics
    or traces payloads). ``errors`` is keyed by the reason a connection was
    closed (a :class:`~qwen_fluent.forward.errors.ForwardError` ``reason``).
    """

    __slots__ = (
        "connections_opened",
        "connections_active",
        "connections_refused",
        "bytes_received",
        "messages",
        "records",
        "errors",
        "acks",
        "auth_failures",
        "heartbeats",
    )

    def __init__(self) -> None:
        self.connections_opened: Counter[str] = Counter()  # by transport: tcp, tls, unix
        self.connections_active = 0
        self.connections_refused = 0  # over the connection limit
        self.bytes_received = 0
        self.messages: Counter[str] = Counter()  # by Mode value
        self.records: Counter[str] = Counter()  # by outcome
        self.errors: Counter[str] = Counter()  # by reason
        self.acks = 0
        self.auth_failures: Counter[str] = Counter()  # by reason
        self.heartbeats = 0

    def add(self, other: ReceiverStats) -> None:
        """Add ``other``'s counts to these (``serve --workers``: one view of every worker's counters)."""
        for name in self.__slots__:
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(getattr(other, name))
            else:
                setattr(self, name, mine + getattr(other, name))

    def __getstate__(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
