"""The record pipeline between the Forward server and the metrics: :class:`MetricsSink`.

The server hands every decoded :class:`~qwen_fluent.forward.events.Message`
to a sink; this one normalises each entry's record and lets
:class:`~qwen_fluent.metrics.LLMMetrics` count it. Accounting follows the
house rule "counted once, or rejected with a reason": every entry of the
message becomes ``stats.records["accepted"]`` or
``stats.records["unrecognised"]`` (with its reason in
``qwen_fluent_unrecognised_records_total``). The server counts the other two
outcomes (``invalid`` entries, which never reach ``entries``, and
``skipped_signal`` messages); for a deferred packed payload, which only the
sink decodes, the sink counts its invalid entries.

Two paths, one result. A message whose entries the connection decoded (the
Message and Forward modes, or any mode when the server does not defer) goes
record by record through the general normaliser and ``observe``: the
reference. A PackedForward payload the connection deferred is decoded in one
typed pass when every record is a request log
(:func:`~qwen_fluent.forward.split_packed` with
:data:`~qwen_fluent.records.typed.RequestRecord`), else split into raw records
of which the request logs decode into typed structs
(:mod:`qwen_fluent.records.typed`); the message is counted column by column
(:mod:`qwen_fluent.metrics.fast`), and the records the typed decoder refuses
are decoded and normalised the general way.
Where the columnar order could change a result, the message goes record by
record instead. ``tests/metrics/test_fast_path.py`` checks that both paths
give the same samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .forward import ForwardError, Limits, decode_packed, decode_record, is_map, split_packed
from .forward.events import Message
from .metrics import LLMMetrics
from .metrics.fast import FastRequests
from .records import Normaliser
from .records.events import NO_SOURCE, Outcome, RequestEvent, Unrecognised
from .records.reasons import INTERNAL_ERROR
from .records.typed import RequestRecord, decode_requests
from .stats import ReceiverStats

log = logging.getLogger(__name__)


class MetricsSink:
    """``sink(message)``: normalise and observe each record of a message.

    ``normaliser`` is a :class:`~qwen_fluent.records.Normaliser` (or any
    ``(record, tag) -> Outcome`` callable, which turns the fast path off).
    Per record the cost is the normaliser, ``metrics.observe`` and one type
    check; the stats counters are bumped once per message. Entry metadata
    (Fluent Bit's ``[[time, metadata], record]`` form) is not used:
    everything the metrics need is in the record. A record without a
    timestamp of its own counts at the message's receive time.

    A normaliser or aggregator bug must not lose a record silently nor stop
    the connection: an exception is logged (once per sink, with traceback)
    and the record counted as unrecognised with reason ``internal_error``.
    A deferred payload the general decoder refuses raises its
    :class:`~qwen_fluent.forward.ForwardError` before anything is counted,
    so the server closes the connection without an ack, as it would have.
    """

    __slots__ = ("_normalise", "_metrics", "_observe", "_stats", "_logged", "_limits", "_fast")

    def __init__(self, normaliser: Callable[[Any, Any], Outcome], metrics: LLMMetrics, stats: ReceiverStats,
                 limits: Limits | None = None, fast: bool = True) -> None:
        self._normalise = normaliser
        self._metrics = metrics
        self._observe = metrics.observe
        self._stats = stats
        self._logged = False
        self._limits = limits if limits is not None else Limits()
        self._fast = (FastRequests(metrics, normaliser, self._limits)
                      if fast and isinstance(normaliser, Normaliser) else None)

    def __call__(self, message: Message) -> None:
        now = time.time()
        with self._metrics.lock:
            if message.payload is None:
                self._entries(message.entries, message.tag, now)
            else:
                self._packed(message, now)

    # -- the reference: record by record ---------------------------------------

    def _outcome(self, record: Any, tag: Any) -> Outcome:
        try:
            return self._normalise(record, tag)
        except Exception:  # noqa: BLE001 - counted as internal_error, logged once; never expected
            self._internal_error()
            return Unrecognised(INTERNAL_ERROR, NO_SOURCE)

    def _count(self, outcome: Outcome, now: float) -> bool:
        """Observe one outcome; ``True`` if it was accepted (anything but Unrecognised)."""
        try:
            self._observe(outcome, now)
        except Exception:  # noqa: BLE001 - as above
            self._internal_error()
            self._observe(Unrecognised(INTERNAL_ERROR, NO_SOURCE))
            return False
        return type(outcome) is not Unrecognised

    def _entries(self, entries: list[Any], tag: Any, now: float) -> None:
        accepted = 0
        for entry in entries:
            accepted += self._count(self._outcome(entry[1], tag), now)
        self._tally(accepted, len(entries) - accepted)

    def _tally(self, accepted: int, unrecognised: int) -> None:
        records = self._stats.records
        if accepted:
            records["accepted"] += accepted
        if unrecognised:
            records["unrecognised"] += unrecognised

    # -- a deferred packed payload ------------------------------------------------

    def _packed(self, message: Message, now: float) -> None:
        fast = self._fast
        if fast is None:
            self._general(message, now)
            return
        payload, size, most = message.payload or b"", message.options.get("size"), self._limits.max_array_len
        tag = message.tag
        # The common case, a message of request logs only: one typed pass over the whole payload.
        whole = split_packed(payload, size, most, RequestRecord)
        if whole is not None and fast.apply(whole, tag, now):
            self._tally(len(whole), 0)
            return
        raws = split_packed(payload, size, most)
        if raws is None:
            self._general(message, now)
            return
        if whole is not None:  # all typed, but the columns refused it
            self._ordered(raws, whole, {}, tag, now)
            return
        # Some records are not request logs: those the typed decoder refuses are decoded and
        # normalised the general way. Everything that can raise runs before anything is counted.
        typed = decode_requests(raws)
        refused = [i for i, rec in enumerate(typed) if rec is None]
        if not all(is_map(raws[i]) for i in refused):  # an invalid entry: the general decoder counts it
            self._general(message, now)
            return
        others = {i: self._outcome(self._decode(raws[i]), tag) for i in refused}
        requests = [rec for rec in typed if rec is not None]
        if not any(type(o) is RequestEvent for o in others.values()) and fast.apply(requests, tag, now, len(others)):
            # The other records touch only the log, vLLM and prompt families: their order
            # relative to the requests changes nothing.
            accepted = len(requests)
            for outcome in others.values():
                accepted += self._count(outcome, now)
            self._tally(accepted, len(typed) - accepted)
            return
        self._ordered(raws, typed, others, tag, now)

    def _ordered(self, raws: list[Any], typed: list[Any], others: dict[int, Outcome], tag: Any, now: float) -> None:
        """Record by record, in order: new label sets are admitted as the reference admits them."""
        fast = self._fast
        assert fast is not None
        events: list[Any] = []
        for i, rec in enumerate(typed):
            event = None
            if rec is not None:
                try:
                    event = fast.event(rec, tag)
                except ForwardError:
                    raise
                except Exception:  # noqa: BLE001 - a fast-path bug: the general path decides
                    event = None
                if event is None:
                    others[i] = self._outcome(self._decode(raws[i]), tag)
            events.append(event)
        accepted = 0
        for i, rec in enumerate(typed):
            event = events[i]
            if event is not None:
                fast.remember(rec, tag, event, now)
                accepted += 1
            else:
                accepted += self._count(others[i], now)
        self._tally(accepted, len(typed) - accepted)

    def _general(self, message: Message, now: float) -> None:
        """The general decoder for the whole payload, which also counts invalid entries (or raises)."""
        decoded = decode_packed(message, self._limits)
        if decoded.invalid:
            self._stats.records["invalid"] += sum(decoded.invalid.values())
        self._entries(decoded.entries, message.tag, now)

    def _decode(self, raw: Any) -> Any:
        return decode_record(raw, self._limits)

    def _internal_error(self) -> None:
        if not self._logged:
            self._logged = True
            log.exception("a record could not be turned into metrics; counted as unrecognised (internal_error)")
