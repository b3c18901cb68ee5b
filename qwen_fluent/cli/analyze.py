"""``qwen-fluent analyze PATH...``: the numbers of a log file, offline.

Reads files, globs and ``-`` (stdin), gzip or not, through the receiver's
normaliser and prints the time span, requests, QPS, status mix, latency and
token percentiles (``--by`` to break them down), as a table, JSON or CSV;
``--plot`` draws them. Exit status: 0 when every input was read to its end
(unparsed lines do not count: they are reported), 1 when an input could not
be read to its end (a truncated gzip file; the summary still covers what
was read), 2 for a usage error (no such file, matplotlib missing for
``--plot``), 130 on Ctrl-C. See docs/analyze.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

EPILOG = """\
inputs: JSON lines (the structured request log), docker json-file and CRI
container logs (partial lines joined), plain vLLM/TGI/uvicorn lines, any of
them gzip-compressed (detected by content). `-` reads standard input.

examples:
  qwen-fluent analyze requests.log
  qwen-fluent analyze '/var/log/containers/llm-*.log' --by pod
  kubectl logs deploy/vllm | qwen-fluent analyze - --format json
  qwen-fluent analyze app.log.gz --by model --plot latency.png
"""


def add_parser(subparsers: Any) -> None:
    """The ``analyze`` subcommand's arguments (cheap: nothing heavy is imported here)."""
    parser = subparsers.add_parser(
        "analyze",
        help="summarise inference logs from files: latency percentiles, QPS, errors, tokens",
        description="Summarise LLM inference logs offline with the receiver's normaliser:\n"
                    "time span, requests, QPS, error rate by status, exact latency and token percentiles.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="log file, glob, or - for standard input")
    parser.add_argument("--by", choices=["path", "model", "pod", "status"], help="break the numbers down by this")
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table", dest="output_format",
                        help="output format (default table)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw latency and QPS over time and a histogram")
    parser.add_argument("--max-requests", type=int, metavar="N", default=None,
                        help="requests held for exact percentiles (default 33554432, 39 bytes each); "
                             "past it percentiles come from a uniform sample")
    parser.add_argument("--max-line-length", type=int, metavar="BYTES", default=None,
                        help="longest line read (default 1048576); longer lines are counted as unparsed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def _fail(message: str) -> int:
    print(f"qwen-fluent analyze: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..analysis import Analyzer, InputNotFoundError, PlotUnavailableError, expand, render, summarise
    from ..analysis.columns import DEFAULT_MAX_ROWS
    from ..records.lines import DEFAULT_MAX_LINE_LENGTH

    max_rows = DEFAULT_MAX_ROWS if args.max_requests is None else args.max_requests
    max_line = DEFAULT_MAX_LINE_LENGTH if args.max_line_length is None else args.max_line_length
    if max_rows < 1:
        return _fail("--max-requests must be at least 1")
    if not 1024 <= max_line <= 1024 ** 3:
        return _fail("--max-line-length must be between 1024 and 1073741824 bytes")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return _fail("--plot needs matplotlib, which is not installed: pip install 'qwen-fluent[plot]'")
    try:
        inputs = expand(args.paths)
    except InputNotFoundError as exc:
        return _fail(str(exc))
    analyzer = Analyzer(max_rows=max_rows, max_line_length=max_line)
    show_progress = not args.no_progress and sys.stderr.isatty()
    try:
        if show_progress:
            _read_with_progress(analyzer, inputs)
        else:
            for source in inputs:
                analyzer.read(source)
    except KeyboardInterrupt:
        return 130
    summary = summarise(analyzer, args.by)
    try:
        render(summary, args.output_format, sys.stdout, color=args.output_format == "table" and sys.stdout.isatty())
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`| head`): no traceback, and no second error when Python
        # flushes stdout at exit; 141 is what a shell reports for a SIGPIPE death
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if args.plot:
        from ..analysis.plot import plot

        try:
            plot(analyzer, args.plot)
        except PlotUnavailableError as exc:
            return _fail(str(exc))
        except (OSError, ValueError) as exc:
            return _fail(f"--plot {args.plot}: {exc}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 1 if summary["read_errors"] else 0


def _read_with_progress(analyzer: Any, inputs: list[Any]) -> None:
    """Read the inputs with a progress bar on stderr (bytes of the files, compressed bytes for gzip)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    sizes = [0 if source.is_stdin else os.path.getsize(source.name) for source in inputs]
    total = sum(sizes) or None
    done = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[lines]}"),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("reading", total=total, lines="")

        for source, size in zip(inputs, sizes):
            def update(opened: Any, lines: int, _base: int = done, _name: str = source.name) -> None:
                progress.update(task, completed=_base + opened.position, description=os.path.basename(_name),
                                lines=f"{lines:,} lines")

            analyzer.read(source, update)
            done += size
            progress.update(task, completed=done)
