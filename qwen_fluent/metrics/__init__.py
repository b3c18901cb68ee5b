"""Aggregating normalised outcomes into Prometheus metric families.

- :class:`MetricsConfig` -- the ``[metrics]`` section: names, labels, caps, expiry, buckets.
- :class:`LLMMetrics` -- the ``<namespace>_*`` families: ``observe(outcome)`` on the hot
  path, ``expire(now)`` now and then, and a prometheus-client collector.
- :class:`ReceiverCollector` -- the ``qwen_fluent_*`` families from
  :class:`~qwen_fluent.stats.ReceiverStats`.

``docs/metrics.md`` lists every family with its type, unit, labels and meaning.
"""

from .config import KNOWN_LABELS, MetricsConfig
from .errors import MetricsConfigError, MetricsError
from .llm import LLMMetrics
from .receiver import ReceiverCollector

__all__ = [
    "KNOWN_LABELS",
    "LLMMetrics",
    "MetricsConfig",
    "MetricsConfigError",
    "MetricsError",
    "ReceiverCollector",
]
