"""What the LLM metric families look like: :class:`MetricsConfig`.

The configuration loader (:mod:`qwen_fluent.config`) maps the ``[metrics]``
TOML section onto this dataclass, refusing unknown keys. Every field has a default that works for
one inference deployment scraped by one Prometheus, and a comment giving the
reason for it. Validation happens once, here, so that the hot path can trust
the result.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from . import buckets as _buckets
from .errors import MetricsConfigError
from .families import REQUEST_HISTOGRAMS

#: Labels taken from a :class:`~qwen_fluent.records.events.RequestEvent`.
REQUEST_LABELS = ("status", "path", "model", "method")
#: Labels taken from the Kubernetes metadata
#: (:class:`~qwen_fluent.records.events.Source`).
SOURCE_LABELS = ("namespace", "pod", "container", "host")
#: Every built-in label name ``labels`` may list.
KNOWN_LABELS = REQUEST_LABELS + SOURCE_LABELS
#: Label names the families use themselves, so neither ``labels`` nor
#: ``pod_labels`` may take them (``le``/``quantile`` are Prometheus'
#: own; ``level``, ``engine`` and ``prompt_hash`` belong to the log, vLLM
#: and prompt families).
RESERVED_LABELS = frozenset({"le", "quantile", "level", "engine", "prompt_hash"})

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _default_label_limits() -> dict[str, int]:
    return {
        # Fixed by the normaliser (records.events.STATUSES has 6 values): the
        # cap is never reached and only guards against a future change.
        "status": 8,
        # HTTP methods.
        "method": 8,
        # OpenAI-compatible servers expose about twenty routes (vLLM:
        # /v1/chat/completions, /v1/completions, /v1/embeddings, /tokenize,
        # ...); 64 leaves room while stopping per-request ids embedded in a
        # path (/v1/requests/<id>) from becoming series.
        "path": 64,
        # One base model per server plus LoRA adapters, which multi-LoRA
        # deployments count in tens.
        "model": 32,
        # Namespaces that run inference in one cluster.
        "namespace": 64,
        # Pods of a large inference fleet; rolling restarts create new pod
        # names, and idle expiry (series_idle_seconds) frees the old ones.
        "pod": 1000,
        # Containers in one inference pod (server, sidecars).
        "container": 16,
        # Nodes carrying GPUs.
        "host": 256,
        # vLLM's engine index (the vLLM families only): its data-parallel
        # rank. One API server logs every rank it balances over, so a
        # multi-node wide expert-parallel deployment (DP 16 to 64 over
        # nodes of 8 GPUs) shows up to 64 indices in one pod. The values
        # are short digit strings shared by all pods; max_series, not this
        # cap, bounds the series.
        "engine": 64,
    }


def _label_list(field: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise MetricsConfigError(field, "must be a list of label names")
    return tuple(value)


def _tuple_of_floats(field: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise MetricsConfigError(field, "must be a list of numbers")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MetricsConfigError(field, f"bound {v!r} is not a number")
        out.append(float(v))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Names, labels, limits and buckets of the LLM metric families.

    Built-in label names (``labels``) are :data:`KNOWN_LABELS`; every family
    uses those of them that make sense for it: request families all of them,
    the GPU-memory, last-request and prompt families ``model`` plus the
    Kubernetes ones, the vLLM families ``model``, ``engine`` and the
    Kubernetes ones, the log family ``level`` plus the Kubernetes ones.
    ``pod_labels`` adds labels read from the pod's Kubernetes labels to every
    family.
    """

    #: Prefix of every LLM family: ``qwen_requests_total`` etc. Default
    #: ``qwen``: the names the article's dashboard, our alert rules and our
    #: Grafana dashboard use. (The receiver's own metrics are always
    #: ``qwen_fluent_*``.)
    namespace: str = "qwen"

    #: Built-in labels of the request families, in this order. Default: all
    #: but ``method`` and ``host``, which add series without answering any of
    #: the article's questions (every inference call is a POST; the node is
    #: known from the pod).
    labels: tuple[str, ...] = ("status", "path", "model", "namespace", "pod", "container")

    #: Built-in labels of the request histograms (durations, time to first
    #: token, time per token, token counts). Default: the default ``labels``
    #: without ``status``. A histogram costs a series per bucket (about 20)
    #: per label set, a counter one: splitting every histogram by six
    #: statuses multiplied the exposition for no question anyone asks of a
    #: latency distribution (the recording rules and the dashboard aggregate
    #: ``status`` away; vLLM's own histograms carry only model and engine).
    #: With the defaults a pod serving one model on two routes costs about
    #: 330 samples, so a node of 8 inference pods about 2,700
    #: (docs/metrics.md, "Cost").
    histogram_labels: tuple[str, ...] = ("path", "model", "namespace", "pod", "container")

    #: Per-histogram label lists overriding ``histogram_labels``, by family
    #: name without the namespace, e.g. ``{request_queue_duration_seconds =
    #: ["model", "namespace", "pod"]}``. Default: none.
    family_labels: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    #: Extra labels from the pod's Kubernetes labels: metric label name ->
    #: pod label key, e.g. ``{"app": "app.kubernetes.io/name"}``. A missing
    #: pod label gives an empty value. Default: none, since pod labels vary
    #: per deployment.
    pod_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    #: Cap on the distinct values of each label that are alive at once, per
    #: label name (shared by all families). Past it a new value folds into
    #: ``overflow_value`` and ``qwen_fluent_label_overflow_total{label}``
    #: counts the folded records. Defaults and reasons:
    #: :func:`_default_label_limits`.
    label_limits: Mapping[str, int] = dataclasses.field(default_factory=_default_label_limits)

    #: Cap for labels that ``label_limits`` does not name (pod labels). 64:
    #: pod labels worth a metric label (app, team, tier) have a handful of
    #: values; 64 is generous yet keeps a mistaken choice (a hash label)
    #: from multiplying series.
    default_label_limit: int = 64

    #: The value a capped label takes. Starts with ``__`` so that no real
    #: path, model or pod name can collide with it.
    overflow_value: str = "__overflow__"

    #: Cap on the label sets of one family group (request families share one
    #: label set; logs, vLLM stats and prompts each have theirs). One request
    #: label set carries about 150 series (7 histograms of ~20 buckets), so
    #: 2000 is ~300k series and a few seconds of scrape rendering at most
    #: (bench/bench_metrics.py prints the figure); past it, a new label set
    #: folds entirely into the overflow value and counts as
    #: ``label_overflow_total{label="max_series"}``.
    max_series: int = 2000

    #: Remove a pod's series once that pod has sent nothing for this long
    #: (seconds); 0 keeps them forever. 300 s: the OpenTelemetry Collector's
    #: Prometheus exporter expires series after 5 minutes
    #: (``metric_expiration``), long enough that an idle-but-alive pod keeps
    #: its counters across normal traffic gaps, while vLLM's 10 s engine
    #: stats lines keep a live vLLM pod's series alive indefinitely.
    series_idle_seconds: float = 300.0

    #: Bounds of the end-to-end, queue and inference duration histograms
    #: (seconds). See :data:`~qwen_fluent.metrics.buckets.DURATION_BUCKETS`.
    duration_buckets: tuple[float, ...] = _buckets.DURATION_BUCKETS
    #: Time-to-first-token bounds (seconds); see ``buckets.TTFT_BUCKETS``.
    ttft_buckets: tuple[float, ...] = _buckets.TTFT_BUCKETS
    #: Time-per-output-token bounds (seconds); see ``buckets.TPOT_BUCKETS``.
    tpot_buckets: tuple[float, ...] = _buckets.TPOT_BUCKETS
    #: Input-token bounds; see ``buckets.INPUT_TOKEN_BUCKETS``.
    input_token_buckets: tuple[float, ...] = _buckets.INPUT_TOKEN_BUCKETS
    #: Output-token bounds; see ``buckets.OUTPUT_TOKEN_BUCKETS``.
    output_token_buckets: tuple[float, ...] = _buckets.OUTPUT_TOKEN_BUCKETS

    #: Attach the last ``request_id`` seen in each bucket of the end-to-end
    #: and inference duration histograms as an OpenMetrics exemplar. On by
    #: default: it costs one tuple per record and links a slow bucket to a
    #: log line; only the OpenMetrics exposition carries it.
    exemplars: bool = True

    #: Expose ``requests_total`` at 0 for every status a label set has not
    #: seen yet, so that the first error is an increase that ``rate()`` sees
    #: (a series that appears at 1 loses that first increment). On by
    #: default; costs series only, at scrape time.
    zero_fill_statuses: bool = True

    def __post_init__(self) -> None:
        # Normalise containers first (TOML gives lists), then check.
        for name in ("labels", "histogram_labels"):
            object.__setattr__(self, name, _label_list(name, getattr(self, name)))
        if not isinstance(self.family_labels, Mapping):
            raise MetricsConfigError("family_labels", "must be a table of histogram name = [label names]")
        histograms = {spec.name for spec in REQUEST_HISTOGRAMS}
        family_labels = {}
        for family, value in self.family_labels.items():
            if family not in histograms:
                raise MetricsConfigError(
                    "family_labels", f"{family!r} is not a request histogram; known: {', '.join(sorted(histograms))}")
            family_labels[family] = _label_list(f"family_labels.{family}", value)
        object.__setattr__(self, "family_labels", family_labels)
        for name in ("duration_buckets", "ttft_buckets", "tpot_buckets",
                     "input_token_buckets", "output_token_buckets"):
            object.__setattr__(self, name, _tuple_of_floats(name, getattr(self, name)))
            self._check_buckets(name, getattr(self, name))
        if not isinstance(self.pod_labels, Mapping):
            raise MetricsConfigError("pod_labels", "must be a table of label name = pod label key")
        object.__setattr__(self, "pod_labels", dict(self.pod_labels))
        if not isinstance(self.label_limits, Mapping):
            raise MetricsConfigError("label_limits", "must be a table of label name = limit")
        limits = _default_label_limits()
        limits.update(self.label_limits)
        object.__setattr__(self, "label_limits", limits)

        if not isinstance(self.namespace, str) or not _METRIC_NAME.match(self.namespace):
            raise MetricsConfigError("namespace", f"{self.namespace!r} is not a valid metric name prefix")
        if self.namespace == "qwen_fluent":
            raise MetricsConfigError("namespace", "qwen_fluent is reserved for the receiver's own metrics")
        seen: set[str] = set()
        for field, names in (("labels", self.labels), ("histogram_labels", self.histogram_labels),
                             *((f"family_labels.{f}", v) for f, v in self.family_labels.items())):
            listed: set[str] = set()
            for label in names:
                if label not in KNOWN_LABELS:
                    raise MetricsConfigError(
                        field, f"unknown label {label!r}; known: {', '.join(KNOWN_LABELS)}")
                if label in listed:
                    raise MetricsConfigError(field, f"label {label!r} listed twice")
                listed.add(label)
            seen |= listed
        for label, key in self.pod_labels.items():
            if not isinstance(label, str) or not _LABEL_NAME.match(label) or label.startswith("__"):
                raise MetricsConfigError("pod_labels", f"{label!r} is not a valid label name")
            if label in seen or label in RESERVED_LABELS:
                raise MetricsConfigError("pod_labels", f"label {label!r} is already in use")
            if not isinstance(key, str) or not key:
                raise MetricsConfigError("pod_labels", f"pod label key for {label!r} must be a non-empty string")
            seen.add(label)
        for label, limit in self.label_limits.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise MetricsConfigError("label_limits", f"limit for {label!r} must be an integer >= 1")
        for name in ("default_label_limit", "max_series"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MetricsConfigError(name, "must be an integer >= 1")
        if not isinstance(self.overflow_value, str) or not self.overflow_value:
            raise MetricsConfigError("overflow_value", "must be a non-empty string")
        idle = self.series_idle_seconds
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not (0 <= idle < math.inf):
            raise MetricsConfigError("series_idle_seconds", "must be a number of seconds >= 0")
        for name in ("exemplars", "zero_fill_statuses"):
            if not isinstance(getattr(self, name), bool):
                raise MetricsConfigError(name, "must be true or false")

    @staticmethod
    def _check_buckets(name: str, bounds: tuple[float, ...]) -> None:
        if not bounds:
            raise MetricsConfigError(name, "needs at least one bound")
        # Cap: a histogram's cost (series, scrape time) grows with its bounds;
        # 64 is three times the defaults' size.
        if len(bounds) > 64:
            raise MetricsConfigError(name, "at most 64 bounds")
        for b in bounds:
            if not math.isfinite(b) or b < 0:
                raise MetricsConfigError(name, f"bound {b!r} must be finite and >= 0 (+Inf is implicit)")
        if any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise MetricsConfigError(name, "bounds must be strictly increasing")

    def labels_of(self, histogram: str) -> tuple[str, ...]:
        """The built-in labels of request histogram ``histogram`` (its name without the namespace)."""
        return self.family_labels.get(histogram, self.histogram_labels)

    def limit_for(self, label: str) -> int:
        """The cap on distinct live values of ``label``."""
        return self.label_limits.get(label, self.default_label_limit)
