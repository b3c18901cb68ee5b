"""Ground truth for the request families, computed the naive way.

Tests feed the receiver a set of requests and compare every sample it exposes
with what :func:`expected_request_samples` computes from the same requests:
a linear scan for each bucket (``le`` inclusive, cumulative), plain sums,
``max`` for timestamps, last-by-timestamp for the GPU gauge. Nothing here
uses the code under test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from qwen_fluent.metrics.buckets import (
    DURATION_BUCKETS,
    INPUT_TOKEN_BUCKETS,
    OUTPUT_TOKEN_BUCKETS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
)

SampleKey = tuple[str, frozenset[tuple[str, str]]]

STATUSES = ("success", "error", "client_error", "timeout", "cancelled", "unknown")
REQUEST_LABELS = ("status", "path", "model", "namespace", "pod", "container")
POD_LABELS = ("model", "namespace", "pod", "container")


@dataclass
class Request:
    """One request as the ground truth sees it: label values and base-unit values (None = absent)."""

    labels: Mapping[str, str]
    total_s: float | None = None
    queue_s: float | None = None
    inference_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    gpu_bytes: float | None = None
    timestamp: float | None = None
    request_id: str = ""


def le_string(bound: float) -> str:
    """How Prometheus' Go client and prometheus-client write a bound: 1.0, 0.05, +Inf."""
    if bound == math.inf:
        return "+Inf"
    return repr(float(bound))


def key(name: str, labels: Mapping[str, str]) -> SampleKey:
    return name, frozenset(labels.items())


def _histogram(out: dict[SampleKey, float], name: str, labels: Mapping[str, str], values: list[float],
               bounds: Iterable[float]) -> None:
    for bound in (*bounds, math.inf):
        out[key(f"{name}_bucket", {**labels, "le": le_string(bound)})] = sum(1 for v in values if v <= bound)
    out[key(f"{name}_count", labels)] = len(values)
    out[key(f"{name}_sum", labels)] = math.fsum(values)


def expected_request_samples(requests: list[Request], ns: str = "qwen",
                             label_names: tuple[str, ...] = REQUEST_LABELS,
                             zero_fill: bool = True,
                             histogram_labels: tuple[str, ...] | None = None) -> dict[SampleKey, float]:
    """Every sample of the request families and the per-pod gauges, with default buckets.

    Counters carry ``label_names``; histograms ``histogram_labels`` (default:
    ``label_names`` without ``status``, which for the default ``label_names``
    is the receiver's default).
    """
    if histogram_labels is None:
        histogram_labels = tuple(n for n in label_names if n != "status")
    groups: dict[tuple[str, ...], list[Request]] = {}
    for r in requests:
        groups.setdefault(tuple(r.labels[n] for n in label_names), []).append(r)
    out: dict[SampleKey, float] = {}
    for values, rs in groups.items():
        labels = dict(zip(label_names, values))
        out[key(f"{ns}_requests_total", labels)] = len(rs)
        out[key(f"{ns}_input_tokens_total", labels)] = sum(r.input_tokens for r in rs if r.input_tokens is not None)
        out[key(f"{ns}_output_tokens_total", labels)] = sum(
            r.output_tokens for r in rs if r.output_tokens is not None)
    hist_groups: dict[tuple[str, ...], list[Request]] = {}
    for r in requests:
        hist_groups.setdefault(tuple(r.labels[n] for n in histogram_labels), []).append(r)
    for values, rs in hist_groups.items():
        labels = dict(zip(histogram_labels, values))
        for name, attr, bounds in (
            ("request_duration_seconds", "total_s", DURATION_BUCKETS),
            ("request_queue_duration_seconds", "queue_s", DURATION_BUCKETS),
            ("request_inference_duration_seconds", "inference_s", DURATION_BUCKETS),
            ("time_to_first_token_seconds", "ttft_s", TTFT_BUCKETS),
            ("time_per_output_token_seconds", "tpot_s", TPOT_BUCKETS),
            ("request_input_tokens", "input_tokens", INPUT_TOKEN_BUCKETS),
            ("request_output_tokens", "output_tokens", OUTPUT_TOKEN_BUCKETS),
        ):
            observed = [getattr(r, attr) for r in rs if getattr(r, attr) is not None]
            _histogram(out, f"{ns}_{name}", labels, observed, bounds)
    if zero_fill and "status" in label_names:
        for values in list(groups):
            labels = dict(zip(label_names, values))
            for status in STATUSES:
                k = key(f"{ns}_requests_total", {**labels, "status": status})
                out.setdefault(k, 0)
    pod_names = tuple(n for n in POD_LABELS if n in label_names)
    pods: dict[tuple[str, ...], list[Request]] = {}
    for r in requests:
        pods.setdefault(tuple(r.labels[n] for n in pod_names), []).append(r)
    for values, rs in pods.items():
        labels = dict(zip(pod_names, values))
        stamped = [r for r in rs if r.timestamp is not None]
        if stamped:
            out[key(f"{ns}_last_request_timestamp_seconds", labels)] = max(r.timestamp for r in stamped)
        reported = [r for r in stamped if r.gpu_bytes is not None]
        if reported:
            # Last by timestamp; among equal timestamps, the last one sent.
            newest = max(r.timestamp for r in reported)
            out[key(f"{ns}_gpu_memory_reported_bytes", labels)] = [
                r for r in reported if r.timestamp == newest][-1].gpu_bytes
    return out


REQUEST_FAMILY_SUFFIXES = (
    "requests_total", "request_duration_seconds", "request_queue_duration_seconds",
    "request_inference_duration_seconds", "time_to_first_token_seconds", "time_per_output_token_seconds",
    "request_input_tokens", "request_output_tokens", "input_tokens_total", "output_tokens_total",
    "last_request_timestamp_seconds", "gpu_memory_reported_bytes",
)


def parse_text(exposition: bytes | str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus text exposition, by name and label set."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    out: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            k = key(s.name, s.labels)
            assert k not in out, f"duplicate sample {k}"
            out[k] = s.value
    return out


def request_samples(samples: Mapping[SampleKey, float], ns: str = "qwen") -> dict[SampleKey, float]:
    """The samples of the request families and per-pod gauges only."""
    prefixes = tuple(f"{ns}_{s}" for s in REQUEST_FAMILY_SUFFIXES)
    return {k: v for k, v in samples.items() if k[0].startswith(prefixes)}


def assert_samples_equal(actual: Mapping[SampleKey, float], expected: Mapping[SampleKey, float]) -> None:
    """Same sample set; counts and buckets exact, sums to 1e-9 relative (float addition order)."""
    missing = sorted(set(expected) - set(actual), key=str)
    extra = sorted(set(actual) - set(expected), key=str)
    assert not missing and not extra, f"missing {missing[:5]} ({len(missing)}), extra {extra[:5]} ({len(extra)})"
    wrong = []
    for k, want in expected.items():
        got = actual[k]
        if k[0].endswith("_sum"):
            ok = math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
        else:
            ok = got == want
        if not ok:
            wrong.append((k, got, want))
    assert not wrong, f"{len(wrong)} samples differ, e.g. {wrong[:5]}"
