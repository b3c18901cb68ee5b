"""The families of :class:`~.stats.ReliabilityStats`, and ``process_start_time_seconds``.

Counters carry a ``_created`` sample (OpenMetrics) set to
``counters_start``; ``qwen_fluent_counters_start_time_seconds`` says the same
for every family of the receiver, whose counters all start together: without
a state directory it equals ``process_start_time_seconds``, and a restart
shows as both moving; with one, it stays at the first start while the
process start moves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from .stats import (
    CHECKPOINT_OUTCOMES,
    DUPLICATE_SOURCES,
    STORE_ERRORS,
    ReliabilityStats,
    process_start_time,
)


class ReliabilityCollector:
    """Exposes a :class:`ReliabilityStats` (and the window's size, read through ``window_size``)."""

    def __init__(self, stats: ReliabilityStats, window_size: Callable[[], int] = lambda: 0,
                 evictions: Callable[[], dict[str, int]] = dict, state: bool = False) -> None:
        self.stats = stats
        self.window_size = window_size
        self.evictions = evictions
        #: Whether a state directory is in use (the checkpoint families appear only then).
        self.state = state
        self.started = process_start_time()

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        created = st.counters_start
        yield GaugeMetricFamily("process_start_time_seconds",
                                "Start time of the process since unix epoch in seconds.", value=self.started)
        yield GaugeMetricFamily(
            "qwen_fluent_counters_start_time_seconds",
            "When the receiver's counters last started from zero, seconds since the epoch: the process start, "
            "or with a state directory the first start whose counters were carried forward.", value=created)
        fam = CounterMetricFamily(
            "qwen_fluent_duplicate_messages_total",
            "Acked messages received again (a client's retry) and not counted again, by where the earlier copy "
            "was recognised: this receiver's window or the store shared by replicas.", labels=("source",))
        for source in DUPLICATE_SOURCES:
            fam.add_metric((source,), st.duplicate_messages[source], created=created)
        yield fam
        fam = CounterMetricFamily("qwen_fluent_duplicate_records_total",
                                  "Records in the duplicate messages, not counted again.", labels=("source",))
        for source in DUPLICATE_SOURCES:
            fam.add_metric((source,), st.duplicate_records[source], created=created)
        yield fam
        fam = CounterMetricFamily(
            "qwen_fluent_duplicate_store_errors_total",
            "Messages refused without an ack because the shared duplicate store did not answer, by reason.",
            labels=("reason",))
        for reason in STORE_ERRORS:
            fam.add_metric((reason,), st.store_errors[reason], created=created)
        yield fam
        yield GaugeMetricFamily("qwen_fluent_duplicate_window_messages",
                                "Digests of applied messages remembered to recognise retries.",
                                value=self.window_size())
        fam = CounterMetricFamily("qwen_fluent_duplicate_window_evictions_total",
                                  "Digests forgotten, by the bound that dropped them (count or age).",
                                  labels=("bound",))
        evicted = self.evictions()
        for bound in ("count", "age"):
            fam.add_metric((bound,), evicted.get(bound, 0))
        yield fam
        if self.state:
            fam = CounterMetricFamily("qwen_fluent_checkpoints_total",
                                      "Checkpoints of the counters to the state directory, by outcome.",
                                      labels=("outcome",))
            for outcome in CHECKPOINT_OUTCOMES:
                fam.add_metric((outcome,), st.checkpoints[outcome], created=created)
            yield fam
            yield GaugeMetricFamily("qwen_fluent_checkpoint_last_timestamp_seconds",
                                    "When the last checkpoint reached the disk, seconds since the epoch (0: none yet).",
                                    value=st.last_checkpoint)
