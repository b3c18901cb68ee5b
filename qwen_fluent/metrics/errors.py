"""Exceptions raised by :mod:`qwen_fluent.metrics`.

Only configuration can fail here: the hot path never raises on a record (a
record either updates a series or is folded into an overflow value and
counted), so the one error class is for a :class:`MetricsConfig` that cannot
work.
"""

from __future__ import annotations


class MetricsError(Exception):
    """Base class for errors of the metrics package."""


class MetricsConfigError(MetricsError, ValueError):
    """A :class:`~qwen_fluent.metrics.config.MetricsConfig` field is invalid.

    ``field`` names the offending field so that the CLI can point at the
    ``[metrics]`` TOML key.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"metrics.{field}: {message}")
        self.field = field
