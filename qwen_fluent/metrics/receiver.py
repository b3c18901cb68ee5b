"""The receiver's own families (``qwen_fluent_*``), read from :class:`ReceiverStats` at scrape time.

The server and the pipeline bump plain integers in
:class:`~qwen_fluent.stats.ReceiverStats`; :class:`ReceiverCollector`
turns them into families when Prometheus scrapes, so counting costs the hot
path a dict increment and nothing more. Label sets whose values are known in
advance (transports, modes, outcomes) start at 0, so that the first increment
is one ``rate()`` sees and an alert on ``increase(...) > 0`` works from the
first scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from .. import __version__
from ..forward.events import Mode
from ..stats import ReceiverStats

#: Transports the server listens on (stats.connections_opened keys).
TRANSPORTS = ("tcp", "tls", "unix")
#: Record outcomes (stats.records keys): accepted and unrecognised are
#: counted by the pipeline, invalid and skipped_signal by the server.
#: group_marker (Fluent Bit's group start/end entries, never records; counted
#: by whichever decoded the entries) appears from its first count.
OUTCOMES = ("accepted", "unrecognised", "invalid", "skipped_signal")


def _zero_filled(known: Iterable[str], counts: dict[str, int]) -> dict[str, int]:
    out = dict.fromkeys(known, 0)
    out.update(counts)
    return out


class ReceiverCollector:
    """Exposes a :class:`ReceiverStats` as the ``qwen_fluent_*`` receiver families.

    ``qwen_fluent_records_total{outcome}`` adds up to every record that
    arrived in a well-formed message: each is ``accepted`` (became a metric),
    ``unrecognised``, ``invalid`` or ``skipped_signal`` (see
    :data:`OUTCOMES`); records in a connection closed for an error are not
    records but bytes, counted by ``qwen_fluent_errors_total{reason}``.
    """

    def __init__(self, stats: ReceiverStats, version: str = __version__) -> None:
        self.stats = stats
        self.version = version

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        fam = CounterMetricFamily("qwen_fluent_connections_total",
                                  "Connections accepted, by transport.", labels=("transport",))
        for transport, n in _zero_filled(TRANSPORTS, dict(st.connections_opened)).items():
            fam.add_metric((transport,), n)
        yield fam
        yield GaugeMetricFamily("qwen_fluent_connections_active", "Connections open now.",
                                value=st.connections_active)
        yield CounterMetricFamily("qwen_fluent_connections_refused_total",
                                  "Connections refused because the connection limit was reached.",
                                  value=st.connections_refused)
        yield CounterMetricFamily("qwen_fluent_received_bytes_total", "Bytes read from Forward connections.",
                                  value=st.bytes_received)
        fam = CounterMetricFamily("qwen_fluent_messages_total", "Forward messages decoded, by carrier mode.",
                                  labels=("mode",))
        for mode, n in _zero_filled((m.value for m in Mode), dict(st.messages)).items():
            fam.add_metric((str(getattr(mode, "value", mode)),), n)  # Mode is a str enum
        yield fam
        fam = CounterMetricFamily(
            "qwen_fluent_records_total",
            "Records received, by outcome: accepted, unrecognised (see qwen_fluent_unrecognised_records_total), "
            "invalid (malformed entry), skipped_signal (metrics or traces payload), group_marker (a Fluent Bit "
            "group start or end entry, skipped).",
            labels=("outcome",))
        for outcome, n in _zero_filled(OUTCOMES, dict(st.records)).items():
            fam.add_metric((outcome,), n)
        yield fam
        fam = CounterMetricFamily("qwen_fluent_errors_total",
                                  "Connections closed for an error, by reason.", labels=("reason",))
        for reason, n in dict(st.errors).items():
            fam.add_metric((reason,), n)
        yield fam
        yield CounterMetricFamily("qwen_fluent_acks_total", "Acknowledgements sent for chunks.", value=st.acks)
        fam = CounterMetricFamily("qwen_fluent_auth_failures_total",
                                  "Secure-forward handshakes that failed, by reason.", labels=("reason",))
        for reason, n in dict(st.auth_failures).items():
            fam.add_metric((reason,), n)
        yield fam
        yield CounterMetricFamily("qwen_fluent_heartbeats_total", "Heartbeats (msgpack nil) received.",
                                  value=st.heartbeats)
        yield InfoMetricFamily("qwen_fluent_build", "The receiver's version; value 1.",
                               value={"version": self.version})
