"""Prometheus-client families written through the exposition Writer's fast methods.

:class:`Replay` is a collector whose ``expose(writer)`` writes given families
the way ``LLMMetrics.expose`` does (label blocks built beforehand, per-bucket
counts), and whose ``collect()`` returns the same families: the exposition
tests hold the fast methods to prometheus-client's bytes with it, and
``bench/bench_metrics.py`` times them with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from qwen_fluent.metrics.exposition import Writer, label_block


class Replay:
    """Writes given prometheus-client families through the Writer's fast methods, as a collector's
    ``expose()`` does: label blocks built once (here, from the families), per-bucket counts."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)
        self.plan: list[tuple[Metric, list[Any] | None]] = []
        for fam in self.families:
            plain = all(s.timestamp is None and s.name != fam.name + "_created" for s in fam.samples)
            if fam.type == "histogram" and plain:
                self.plan.append((fam, self._histograms(fam)))
            elif fam.type in ("counter", "gauge") and plain and all(s.exemplar is None for s in fam.samples):
                self.plan.append((fam, [(self._block(s.labels), s.value) for s in fam.samples]))
            elif fam.type == "info" and plain:
                self.plan.append((fam, [self._block(s.labels) for s in fam.samples]))
            else:
                self.plan.append((fam, None))  # anything else: the generic path, in the same writer

    @staticmethod
    def _block(labels: dict[str, str]) -> str:
        return label_block(list(labels), list(labels.values()))

    def _histograms(self, fam: Metric) -> list[Any]:
        rows: list[Any] = []
        les: list[str] = []
        cumulative: list[float] = []
        exemplars: list[Any] = []
        for s in fam.samples:
            if s.name == fam.name + "_bucket":
                les.append(s.labels["le"])
                cumulative.append(s.value)
                ex = s.exemplar
                exemplars.append(None if ex is None else (self._block(ex.labels), ex.value, ex.timestamp))
            elif s.name == fam.name + "_sum":
                per_bucket = [int(b - a) for a, b in zip([0, *cumulative], cumulative)]
                block = self._block({k: v for k, v in s.labels.items()})
                rows.append((block, les, per_bucket, s.value, exemplars if any(exemplars) else None))
                les, cumulative, exemplars = [], [], []
        return rows

    def collect(self) -> list[Metric]:
        return self.families

    def expose(self, writer: Writer) -> None:
        for fam, rows in self.plan:
            if rows is None:
                writer.metric(fam)
                continue
            writer.family(fam.name, fam.type, fam.documentation, fam.unit)
            if fam.type == "histogram":
                for block, les, counts, sum_, exemplars in rows:
                    writer.histogram(block, les, counts, sum_, exemplars)
            elif fam.type == "info":
                for block in rows:
                    writer.info(block)
            else:
                write = writer.counter if fam.type == "counter" else writer.gauge
                for block, value in rows:
                    write(block, value)
