"""The summary of an analysis: one JSON-ready dict, the source of every output format.

The dict is the documented, stable schema of ``analyze --format json``
(docs/analyze.md, schema ``qwen-fluent/analyze/v1``): keys are only ever
added within a version, never renamed or removed. Percentiles are numpy's
default (``method="linear"``) over every stored value of a column, computed
in float64; a request that did not carry a value (no queue time, say) is left
out of that column's distribution, never counted as 0.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..records import STATUSES
from .analyzer import Analyzer
from .columns import CODE_COLUMNS, FLOAT_COLUMNS, INT_COLUMNS

SCHEMA = "qwen-fluent/analyze/v1"
PERCENTILES = (50, 90, 95, 99)
#: JSON key -> column, for the durations (seconds) and the token counts.
DURATIONS = (
    ("total_time_seconds", "total_s"),
    ("queue_time_seconds", "queue_s"),
    ("inference_time_seconds", "inference_s"),
    ("time_to_first_token_seconds", "ttft_s"),
)
TOKENS = (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"))
#: Statuses that count as errors in ``error_rate``: ``success`` and ``unknown`` do not.
ERROR_STATUSES = ("error", "client_error", "timeout", "cancelled")
#: ``--by`` choices -> the column that keys the groups.
GROUP_BY = ("path", "model", "pod", "status")


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat().replace("+00:00", "Z")


def distribution(values: np.ndarray, with_sum: bool = False) -> dict[str, Any]:
    """count, mean, p50, p90, p95, p99, max (and sum) of the present values; ``None`` where there are none."""
    if values.dtype.kind == "f":
        present = values[~np.isnan(values)].astype(np.float64)
    else:
        present = values[values >= 0].astype(np.int64)
    out: dict[str, Any] = {"count": int(present.size)}
    if with_sum:
        out["sum"] = int(present.sum()) if present.size else 0
    if not present.size:
        out.update({"mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None})
        return out
    points = np.percentile(present.astype(np.float64), PERCENTILES)
    out["mean"] = float(present.mean(dtype=np.float64))
    out.update({f"p{q}": float(value) for q, value in zip(PERCENTILES, points)})
    maximum = present.max()
    out["max"] = int(maximum) if with_sum else float(maximum)
    return out


def _requests_part(rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """The request statistics of a set of rows (all of them, or one group)."""
    count = int(rows["status"].size)
    statuses = np.bincount(rows["status"].astype(np.intp), minlength=len(STATUSES))
    by_status = {name: int(statuses[n]) for n, name in enumerate(STATUSES)}
    stamps = rows["timestamp"]
    stamps = stamps[~np.isnan(stamps)]
    first = float(stamps.min()) if stamps.size else None
    last = float(stamps.max()) if stamps.size else None
    out: dict[str, Any] = {"requests": count}
    out.update(_rates(count, by_status, first, last))
    for key, column in DURATIONS:
        out[key] = distribution(rows[column])
    for key, column in TOKENS:
        out[key] = distribution(rows[column], with_sum=True)
    out["tokens_per_second"] = _throughput(out, out["time_span"]["seconds"])
    return out


def _rates(count: int, by_status: dict[str, int], first: float | None, last: float | None) -> dict[str, Any]:
    span = None if first is None or last is None else last - first
    return {
        "time_span": {"start": _iso(first), "end": _iso(last), "seconds": span},
        # a span of 0 (one request, or all stamped in the same whole second) gives no rate
        "qps": count / span if span else None,
        "by_status": by_status,
        "error_rate": sum(by_status[name] for name in ERROR_STATUSES) / count if count else None,
    }


def _throughput(part: dict[str, Any], span: float | None) -> dict[str, float | None]:
    return {
        "input": part["input_tokens"]["sum"] / span if span else None,
        "output": part["output_tokens"]["sum"] / span if span else None,
    }


def summarise(analyzer: Analyzer, by: str | None = None) -> dict[str, Any]:
    """The whole summary (see the module docstring and docs/analyze.md)."""
    analyzer.finish()
    columns = analyzer.columns
    counts = analyzer.counts
    rows = {name: columns.column(name) for name in (*FLOAT_COLUMNS, *INT_COLUMNS, "timestamp", "status",
                                                    *CODE_COLUMNS)}
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "inputs": [
            {"path": f.path, "lines": f.lines, "records": f.records, "requests": f.requests, "error": f.error}
            for f in counts.files
        ],
        "lines": counts.lines,
        "blank_lines": counts.blank_lines,
        "joined_partial_lines": counts.joined_partial_lines,
        "percentiles_exact": columns.exact,
        "stored_requests": columns.rows,
    }
    part = _requests_part(rows)
    if not columns.exact:
        # the rows are a sample: counts, sums, maxima and the span come from every request
        totals = columns.totals
        by_status = {name: totals.by_status[n] for n, name in enumerate(STATUSES)}
        part.update(_rates(totals.requests, by_status, totals.first, totals.last))
        part["requests"] = totals.requests
        for key, column in (*DURATIONS, *TOKENS):
            if part[key]["max"] is not None and column in totals.maxima:
                part[key]["max"] = totals.maxima[column]
        for key, column in TOKENS:
            part[key]["sum"] = totals.token_sums[column]
        part["tokens_per_second"] = _throughput(part, part["time_span"]["seconds"])
    summary.update(part)
    summary.update({
        "log_lines": dict(counts.log_lines),
        "engine_stats_lines": counts.engine_stats,
        "prompt_changes": counts.prompt_changes,
        "unparsed_lines": counts.unparsed_total,
        "unparsed_by_reason": {reason: n for reason, n in counts.unparsed.items() if n},
        "unparsed_samples": [
            {"path": s.path, "line": s.line, "reason": s.reason, "text": s.text} for s in counts.samples
        ],
        "read_errors": [{"path": f.path, "error": f.error} for f in counts.read_errors],
        "by": by,
        "groups": groups(analyzer, by, rows) if by else [],
    })
    return summary


def groups(analyzer: Analyzer, by: str, rows: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One request summary per value of ``by``, most requests first (ties by key)."""
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r}; one of {', '.join(GROUP_BY)}")
    keys = rows[by]
    names = list(STATUSES) if by == "status" else analyzer.columns.interners[by].names
    if not keys.size:
        return []
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    out = []
    for start, end in zip(starts, ends):
        index = order[start:end]
        part = _requests_part({name: values[index] for name, values in rows.items()})
        out.append({"key": names[int(ordered[start])], **part})
    out.sort(key=lambda group: (-group["requests"], group["key"]))
    return out
