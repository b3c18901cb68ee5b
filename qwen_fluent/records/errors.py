"""The exceptions :mod:`qwen_fluent.records` raises.

Normalising a record never raises (a record we cannot use becomes an
:class:`~qwen_fluent.records.events.Unrecognised` outcome with a reason); only
building a :class:`~qwen_fluent.records.config.NormaliserConfig` from bad
settings does, so that a typo in the ``[records]`` TOML section stops the
receiver at start-up instead of silently changing what it counts.
"""

from __future__ import annotations


class RecordsError(Exception):
    """Base class of every error raised by :mod:`qwen_fluent.records`."""


class NormaliserConfigError(RecordsError, ValueError):
    """A ``[records]`` setting has the wrong type, is out of range, or is unknown."""
