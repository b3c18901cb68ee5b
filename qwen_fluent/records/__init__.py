"""Turning Forward records into request, log, engine-stats and prompt-change events.

:data:`normalise` (a default :class:`Normaliser`) maps any record to exactly
one of the outcomes in :mod:`.events`; :class:`NormaliserConfig` is the
``[records]`` section of the configuration. ``docs/records.md`` lists every
accepted shape, field, unit, status and level mapping, and the reasons a
record is unrecognised.
"""

from .config import NormaliserConfig
from .errors import NormaliserConfigError, RecordsError
from .events import (
    LEVELS,
    NO_SOURCE,
    STATUSES,
    EngineStats,
    LogEvent,
    Outcome,
    PromptChange,
    RequestEvent,
    Source,
    Unrecognised,
)
from .normaliser import Normaliser, normalise
from .reasons import UNRECOGNISED_REASONS

__all__ = [
    "LEVELS",
    "NO_SOURCE",
    "STATUSES",
    "UNRECOGNISED_REASONS",
    "EngineStats",
    "LogEvent",
    "Normaliser",
    "NormaliserConfig",
    "NormaliserConfigError",
    "Outcome",
    "PromptChange",
    "RecordsError",
    "RequestEvent",
    "Source",
    "Unrecognised",
    "normalise",
]
