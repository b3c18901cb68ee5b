"""The three output formats of ``analyze``: a table for people, JSON and CSV for programs.

All three are drawn from the summary dict (:func:`.summary.summarise`), so
they never disagree. ``rich`` (a core dependency, already used for the
terminal views) is imported when the table is drawn, not at import time.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, TextIO

from ..records import STATUSES
from .summary import DURATIONS, PERCENTILES, TOKENS

FORMATS = ("table", "json", "csv")
#: Groups shown in the table (JSON and CSV have them all): a screen, most requests first.
TABLE_GROUPS = 30
_STATS = ("count", "mean", *(f"p{q}" for q in PERCENTILES), "max")
_DURATION_NAMES = {
    "total_time_seconds": "end-to-end",
    "queue_time_seconds": "queue",
    "inference_time_seconds": "inference",
    "time_to_first_token_seconds": "time to first token",
}


def write_json(summary: dict[str, Any], out: TextIO) -> None:
    json.dump(summary, out, indent=2, allow_nan=False)
    out.write("\n")


def csv_header() -> list[str]:
    """The CSV columns, in order (stable, like the JSON schema)."""
    header = ["by", "key", "requests", "qps", "error_rate", "start", "end", "span_seconds"]
    header += [f"status_{name}" for name in STATUSES]
    for key, _ in DURATIONS:
        header += [f"{key}_{stat}" for stat in _STATS]
    for key, _ in TOKENS:
        header += [f"{key}_{stat}" for stat in ("sum", *_STATS)]
    header += ["input_tokens_per_second", "output_tokens_per_second"]
    return header


def _csv_row(by: str, key: str, part: dict[str, Any]) -> list[Any]:
    span = part["time_span"]
    row: list[Any] = [by, key, part["requests"], part["qps"], part["error_rate"], span["start"], span["end"],
                      span["seconds"]]
    row += [part["by_status"][name] for name in STATUSES]
    for name, _ in DURATIONS:
        row += [part[name][stat] for stat in _STATS]
    for name, _ in TOKENS:
        row += [part[name][stat] for stat in ("sum", *_STATS)]
    row += [part["tokens_per_second"]["input"], part["tokens_per_second"]["output"]]
    return ["" if value is None else value for value in row]


def write_csv(summary: dict[str, Any], out: TextIO) -> None:
    """One row for all requests (key ``(all)``), then one per group when ``--by`` was given."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_header())
    by = summary["by"] or ""
    writer.writerow(_csv_row(by, "(all)", summary))
    for group in summary["groups"]:
        writer.writerow(_csv_row(by, group["key"], group))


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def write_table(summary: dict[str, Any], out: TextIO, color: bool = False) -> None:
    """The at-a-glance view: totals, latency and token tables, groups, what was not understood."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, width=None if color else 120, force_terminal=color, no_color=not color,
                      highlight=False, soft_wrap=False)
    files = len(summary["inputs"])
    console.print(f"[bold]qwen-fluent analyze[/]: {files} input{'s' * (files != 1)}, "
                  f"{_int(summary['lines'])} lines, {_int(summary['requests'])} requests")
    span = summary["time_span"]
    if span["start"] is not None:
        console.print(f"time span   {span['start']} .. {span['end']} ({_num(span['seconds'], 1)} s)"
                      f"   QPS {_num(summary['qps'], 2)}")
    else:
        console.print("time span   - (no request carried a timestamp)")
    requests = summary["requests"]
    if requests:
        statuses = "  ".join(f"{name} {_pct(count / requests)} ({_int(count)})"
                             for name, count in summary["by_status"].items() if count)
        console.print(f"status      {statuses}")
        console.print(f"error rate  {_pct(summary['error_rate'])} (error, client_error, timeout, cancelled)")
    if not summary["percentiles_exact"]:
        console.print(f"[yellow]percentiles estimated from a uniform sample of {_int(summary['stored_requests'])} "
                      f"requests (raise --max-requests for exact ones)[/]")

    latency = Table(title="latency (seconds)", title_justify="left")
    latency.add_column("")
    for stat in _STATS:
        latency.add_column(stat, justify="right")
    for key, _ in DURATIONS:
        part = summary[key]
        latency.add_row(_DURATION_NAMES[key], _int(part["count"]), *(_num(part[s]) for s in _STATS[1:]))
    console.print(latency)

    tokens = Table(title="tokens per request", title_justify="left")
    tokens.add_column("")
    for stat in ("sum", *_STATS):
        tokens.add_column(stat, justify="right")
    for key, _ in TOKENS:
        part = summary[key]
        tokens.add_row(key.replace("_tokens", ""), _int(part["sum"]), _int(part["count"]), _num(part["mean"], 1),
                       *(_num(part[s], 1) for s in _STATS[2:-1]), _int(part["max"]))
    console.print(tokens)
    rate = summary["tokens_per_second"]
    console.print(f"tokens/s    in {_num(rate['input'], 1)}   out {_num(rate['output'], 1)}")

    if summary["groups"]:
        _groups_table(console, summary, Table, escape)

    levels = ", ".join(f"{level} {_int(n)}" for level, n in summary["log_lines"].items() if n) or "none"
    console.print(f"other       log lines: {levels}; vLLM stats lines {_int(summary['engine_stats_lines'])}; "
                  f"prompt changes {_int(summary['prompt_changes'])}")
    if summary["unparsed_lines"]:
        reasons = ", ".join(f"{reason} {_int(n)}" for reason, n in summary["unparsed_by_reason"].items())
        console.print(f"[yellow]unparsed    {_int(summary['unparsed_lines'])} ({reasons}); the first:[/]")
        for sample in summary["unparsed_samples"]:
            console.print(f"  {sample['path']}:{sample['line']}: {sample['reason']}: {sample['text']!r}",
                          markup=False)
    for error in summary["read_errors"]:
        console.print(f"[red]read error  {escape(error['path'])}: {escape(error['error'])}[/]")


def _groups_table(console: Any, summary: dict[str, Any], table_class: Any, escape: Any) -> None:
    groups = summary["groups"]
    table = table_class(title=f"by {summary['by']}", title_justify="left")
    for name in ("", "requests", "QPS", "error rate", "p50 s", "p95 s", "p99 s", "TTFT p50 s", "tokens in",
                 "tokens out"):
        table.add_column(name, justify="left" if not name else "right")
    for group in groups[:TABLE_GROUPS]:
        total = group["total_time_seconds"]
        # keys come from the log (a path may hold "[id]"): never read as markup
        table.add_row(escape(group["key"]) or '""', _int(group["requests"]), _num(group["qps"], 2),
                      _pct(group["error_rate"]), _num(total["p50"]), _num(total["p95"]), _num(total["p99"]),
                      _num(group["time_to_first_token_seconds"]["p50"]), _int(group["input_tokens"]["sum"]),
                      _int(group["output_tokens"]["sum"]))
    console.print(table)
    if len(groups) > TABLE_GROUPS:
        console.print(f"... and {len(groups) - TABLE_GROUPS} more {summary['by']} values "
                      "(--format json or csv lists all)")


def render(summary: dict[str, Any], fmt: str, out: TextIO, color: bool = False) -> None:
    """Write ``summary`` to ``out`` in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        write_json(summary, out)
    elif fmt == "csv":
        write_csv(summary, out)
    elif fmt == "table":
        write_table(summary, out, color)
    else:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def to_string(summary: dict[str, Any], fmt: str) -> str:
    """The rendering as a string (tests, and callers that need it whole)."""
    out = io.StringIO()
    render(summary, fmt, out)
    return out.getvalue()
