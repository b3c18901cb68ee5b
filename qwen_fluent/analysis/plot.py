"""``analyze --plot FILE.png``: latency percentiles and QPS over time, and the latency histogram.

matplotlib is an optional extra (``pip install 'qwen-fluent[plot]'``): it is
imported here, when a plot is asked for, and its absence is
:class:`PlotUnavailableError` with that command in the message. The figure
is drawn with :class:`matplotlib.figure.Figure` directly, not ``pyplot``, so
no GUI backend or global figure state is involved.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from .analyzer import Analyzer
from .errors import PlotUnavailableError

#: Time buckets drawn at most: a point per pixel column or so of a 12-inch figure.
MAX_BUCKETS = 240
#: Bucket widths tried, seconds: the first that gives at most MAX_BUCKETS buckets.
_WIDTHS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 6 * 3600, 86400, 7 * 86400)
#: Histogram bins (log-spaced): latencies span four decades from a cached reply to a long generation.
HISTOGRAM_BINS = 60


def bucket_width(span: float) -> int:
    """The bucket width (seconds) for a time span: the smallest of a few round widths that fits."""
    for width in _WIDTHS:
        if span / width <= MAX_BUCKETS:
            return width
    return int(np.ceil(span / MAX_BUCKETS))


def over_time(stamps: np.ndarray, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Bucket starts (epoch s), requests per second, and p50/p95/p99 of total time per bucket (NaN if none)."""
    present = ~np.isnan(stamps)
    stamps = stamps[present]
    totals = totals[present].astype(np.float64)
    if not stamps.size:
        return np.empty(0), np.empty(0), np.empty((0, 3)), 1
    first = float(np.floor(stamps.min()))
    width = bucket_width(float(stamps.max()) - first)
    index = ((stamps - first) // width).astype(np.int64)
    buckets = int(index.max()) + 1
    qps = np.bincount(index, minlength=buckets) / width
    points = np.full((buckets, 3), np.nan)
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    for start, end in zip(starts, ends):
        values = totals[order[start:end]]
        values = values[~np.isnan(values)]
        if values.size:
            points[ordered[start]] = np.percentile(values, (50, 95, 99))
    return first + width * np.arange(buckets), qps, points, width


def plot(analyzer: Analyzer, path: str) -> None:
    """Write the three panels to ``path`` (PNG, or any format matplotlib knows by the suffix)."""
    try:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailableError(
            "--plot needs matplotlib, which is not installed: pip install 'qwen-fluent[plot]'"
        ) from exc
    columns = analyzer.columns
    stamps = columns.column("timestamp")
    totals = columns.column("total_s")
    starts, qps, points, width = over_time(stamps, totals)
    sampled = ""
    if not columns.exact and columns.rows:
        # the rows are a uniform sample: scale the counts back to every request seen
        qps = qps * (columns.totals.requests / columns.rows)
        sampled = f" (estimated from a sample of {columns.rows:,})"
    figure = Figure(figsize=(12, 10), layout="constrained")
    latency, rate, histogram = figure.subplots(3, 1)
    if starts.size:
        when = [datetime.fromtimestamp(s, timezone.utc) for s in starts]
        for column, label in enumerate(("p50", "p95", "p99")):
            latency.plot(when, points[:, column], label=label, marker="." if starts.size < 60 else None)
        latency.legend(loc="upper left")
        rate.plot(when, qps, drawstyle="steps-post")
        for axes in (latency, rate):
            locator = AutoDateLocator()
            axes.xaxis.set_major_locator(locator)
            axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    else:
        for axes in (latency, rate):
            axes.text(0.5, 0.5, "no request carried a timestamp", ha="center", va="center",
                      transform=axes.transAxes)
    latency.set_title(f"end-to-end latency percentiles per {width} s (UTC)")
    latency.set_ylabel("seconds")
    rate.set_title(f"requests per second, averaged over {width} s{sampled}")
    rate.set_ylabel("requests/s")
    values = totals[~np.isnan(totals)].astype(np.float64)
    positive = values[values > 0]
    if positive.size:
        low, high = float(positive.min()), float(positive.max())
        edges = np.geomspace(low, high * 1.0001, HISTOGRAM_BINS + 1) if high > low else np.array([low * 0.9, low * 1.1])
        histogram.hist(positive, bins=edges)
        histogram.set_xscale("log")
        for q, style in ((50, "--"), (99, ":")):
            mark = float(np.percentile(values, q))
            if mark > 0:
                histogram.axvline(mark, color="black", linestyle=style, label=f"p{q} {mark:.3f} s")
        histogram.legend(loc="upper right")
    else:
        histogram.text(0.5, 0.5, "no request carried a total time", ha="center", va="center",
                       transform=histogram.transAxes)
    histogram.set_title("end-to-end latency histogram (log scale)")
    histogram.set_xlabel("seconds")
    histogram.set_ylabel("requests")
    figure.savefig(path, dpi=100)
