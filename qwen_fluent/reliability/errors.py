"""Errors of the exactly-once machinery: a state file that cannot be used, a duplicate store that cannot answer."""

from __future__ import annotations

from ..forward.errors import ForwardError


class ReliabilityError(Exception):
    """Base class of this package's errors."""


class StateError(ReliabilityError):
    """The state directory or its checkpoint cannot be used; the message names the file and what to do."""


class StateCorrupt(StateError):
    """The checkpoint file exists but is not a whole checkpoint of a format this version reads.

    The receiver refuses to start rather than start from zero without a word:
    a silent reset is exactly what ``--state-dir`` exists to prevent. Moving
    the file away starts the counters from zero on purpose.
    """


class StoreUnavailable(ForwardError, ReliabilityError):
    """The shared duplicate store (Redis) did not answer; the message is not counted and not acked.

    A :class:`~qwen_fluent.forward.ForwardError`, so the Forward server does
    with it what it does with any error a sink raises for a message: it counts
    ``qwen_fluent_errors_total{reason="duplicate_store_unavailable"}``, logs one
    line and closes the connection without the ack. The client keeps the chunk
    and resends it; once the store answers again it is counted exactly once.
    ``cause`` is the reason counted in ``qwen_fluent_duplicate_store_errors_total``.
    """

    reason = "duplicate_store_unavailable"

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
