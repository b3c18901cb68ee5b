"""The record pipeline between the Forward server and the metrics: :class:`MetricsSink`.

The server hands every decoded :class:`~qwen_fluent.forward.events.Message`
to a sink; this one normalises each entry's record and lets
:class:`~qwen_fluent.metrics.LLMMetrics` count it. Accounting follows the
house rule "counted once, or rejected with a reason": every entry of the
message becomes ``stats.records["accepted"]`` or
``stats.records["unrecognised"]`` (with its reason in
``qwen_fluent_unrecognised_records_total``). The server counts the other two
outcomes (``invalid`` entries, which never reach ``entries``, and
``skipped_signal`` messages).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .forward.events import Message
from .metrics import LLMMetrics
from .records.events import NO_SOURCE, Outcome, Unrecognised
from .records.reasons import INTERNAL_ERROR
from .stats import ReceiverStats

log = logging.getLogger(__name__)


class MetricsSink:
    """``sink(message)``: normalise and observe each record of a message.

    ``normaliser`` is a :class:`~qwen_fluent.records.Normaliser` (or any
    ``(record, tag) -> Outcome`` callable). Per record the cost is the
    normaliser, ``metrics.observe`` and one type check; the stats counters are
    bumped once per message. Entry metadata (Fluent Bit's
    ``[[time, metadata], record]`` form) is not used: everything the metrics
    need is in the record.

    A normaliser or aggregator bug must not lose a record silently nor stop
    the connection: an exception is logged (once per sink, with traceback)
    and the record counted as unrecognised with reason ``internal_error``.
    """

    __slots__ = ("_normalise", "_observe", "_stats", "_logged")

    def __init__(self, normaliser: Callable[[Any, Any], Outcome], metrics: LLMMetrics, stats: ReceiverStats) -> None:
        self._normalise = normaliser
        self._observe = metrics.observe
        self._stats = stats
        self._logged = False

    def __call__(self, message: Message) -> None:
        tag = message.tag
        normalise = self._normalise
        observe = self._observe
        unrecognised = 0
        for entry in message.entries:
            try:
                outcome = normalise(entry[1], tag)
                observe(outcome)
            except Exception:  # noqa: BLE001 - counted below, logged once; never expected
                outcome = Unrecognised(INTERNAL_ERROR, NO_SOURCE)
                self._internal_error()
            if type(outcome) is Unrecognised:
                unrecognised += 1
        records = self._stats.records
        accepted = len(message.entries) - unrecognised
        if accepted:
            records["accepted"] += accepted
        if unrecognised:
            records["unrecognised"] += unrecognised

    def _internal_error(self) -> None:
        self._observe(Unrecognised(INTERNAL_ERROR, NO_SOURCE))
        if not self._logged:
            self._logged = True
            log.exception("a record could not be turned into metrics; counted as unrecognised (internal_error)")
