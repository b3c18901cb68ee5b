"""Reading log files through the receiver's own normaliser into request columns.

:class:`Analyzer` is the engine of ``qwen-fluent analyze``: each input is
framed into lines (:mod:`.inputs`), the lines into records
(:class:`~qwen_fluent.records.lines.LineReader`), and every record goes
through :class:`~qwen_fluent.records.Normaliser`, the same code that the
Forward receiver runs, so a line counts here exactly as it would count in
``/metrics``. Requests become rows of :class:`~.columns.RequestColumns`;
everything else is counted by kind (log lines by level, vLLM stats lines,
prompt changes) or, when the normaliser does not recognise it, by reason
beside the lines the line reader could not parse.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..records import (
    LEVELS,
    UNRECOGNISED_REASONS,
    EngineStats,
    LogEvent,
    Normaliser,
    NormaliserConfig,
    PromptChange,
    RequestEvent,
)
from ..records.lines import DEFAULT_MAX_LINE_LENGTH, UNPARSED_REASONS, LineReader
from .columns import DEFAULT_MAX_ROWS, RequestColumns
from .inputs import Input, Opened, lines

#: Unparsed lines shown to the user, across all inputs: enough to see what kind of
#: breakage it is, few enough to stay on one screen.
MAX_SAMPLES = 5
#: Characters shown of each sample line.
SAMPLE_LENGTH = 200
#: How often (lines) the progress callback is called: rare enough to cost nothing.
PROGRESS_EVERY = 65536

# The normaliser's own bound on a wrapped JSON line is 64 KiB (records.md): fine for
# the receiver, which must not let one record stall its loop, but an offline analysis
# may read a joined partial line up to the line reader's bound.
_NORMALISER_CONFIG = NormaliserConfig(max_line_length=DEFAULT_MAX_LINE_LENGTH)


@dataclass
class Sample:
    """An unparsed line shown to the user."""

    path: str
    line: int
    reason: str
    text: str


@dataclass
class FileReport:
    """What one input gave."""

    path: str
    lines: int = 0
    records: int = 0
    requests: int = 0
    error: str | None = None


@dataclass
class Counts:
    """Everything counted besides the request rows."""

    lines: int = 0
    blank_lines: int = 0
    joined_partial_lines: int = 0
    records: int = 0
    log_lines: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    engine_stats: int = 0
    prompt_changes: int = 0
    unparsed: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)

    @property
    def unparsed_total(self) -> int:
        return sum(self.unparsed.values())

    @property
    def read_errors(self) -> list[FileReport]:
        return [report for report in self.files if report.error is not None]


class Analyzer:
    """Reads inputs (:meth:`read`) or records (:meth:`record`) into :attr:`columns` and :attr:`counts`.

    One instance per analysis; :meth:`finish` before reading the results (``summarise`` calls it).
    """

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS, max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
                 config: NormaliserConfig | None = None) -> None:
        self.normalise = Normaliser(config if config is not None else _NORMALISER_CONFIG)
        self.columns = RequestColumns(max_rows)
        self.counts = Counts(unparsed=dict.fromkeys((*UNPARSED_REASONS, *UNRECOGNISED_REASONS), 0))
        self.max_line_length = max_line_length
        self._file_samples: list[Sample] = []  # this input's unrecognised records, merged at its end

    def read(self, source: Input, progress: Callable[[Opened, int], None] | None = None) -> FileReport:
        """Read one input to its end. A read error (a truncated gzip, an I/O error) ends that input, counted."""
        report = FileReport(source.name)
        self.counts.files.append(report)
        reader = LineReader(self.max_line_length)
        requests_before = self.columns.seen
        self._file_samples = []
        try:
            opened = Opened(source)
        except OSError as exc:
            report.error = exc.strerror or str(exc)
            return report
        with opened:
            try:
                self._lines(opened, reader, source, progress)
            except (EOFError, OSError, zlib.error) as exc:
                # gzip raises EOFError for a stream cut short, BadGzipFile (an OSError) or
                # zlib.error for corrupt data: what was read before it still counts
                report.error = _describe(exc, opened.compressed)
            for record in reader.close():
                self.record(record, source.tag, source.name, reader.lines)
        counts = self.counts
        report.lines = reader.lines
        report.records = reader.records
        report.requests = self.columns.seen - requests_before
        counts.lines += reader.lines
        counts.blank_lines += reader.blank
        counts.joined_partial_lines += reader.joined
        counts.records += reader.records
        for reason, count in reader.unparsed.items():
            counts.unparsed[reason] += count
        # the first unparsed lines of this input in line order, whichever stage rejected them
        samples = self._file_samples + [Sample(source.name, s.line_number, s.reason, s.text) for s in reader.samples]
        samples.sort(key=lambda sample: sample.line)
        for sample in samples:
            self._sample(sample.path, sample.line, sample.reason, sample.text)
        self._file_samples = []
        return report

    def _lines(self, opened: Opened, reader: LineReader, source: Input,
               progress: Callable[[Opened, int], None] | None) -> None:
        feed = reader.line
        record = self.record
        tag = source.tag
        name = source.name
        every = PROGRESS_EVERY
        for line in lines(opened.stream, self.max_line_length):
            for item in feed(line):
                record(item, tag, name, reader.lines)
            if progress is not None and not reader.lines % every:
                progress(opened, reader.lines)

    def record(self, record: dict[str, Any], tag: str = "", path: str = "", line: int = 0) -> None:
        """Count one record as the receiver would."""
        outcome = self.normalise(record, tag)
        kind = type(outcome)
        if kind is RequestEvent:
            event: RequestEvent = outcome  # type: ignore[assignment]
            stamp = event.timestamp
            if stamp is None:
                # the container runtime's time of the line, when the app stamped none
                envelope = record.get("time", record.get("date"))
                if envelope is not None:
                    stamp = self.normalise.timestamp(envelope)
            self.columns.add(stamp, event.status, event.path, event.model, event.source.pod, event.total_s,
                             event.queue_s, event.inference_s, event.ttft_s, event.input_tokens,
                             event.output_tokens)
        elif kind is LogEvent:
            self.counts.log_lines[outcome.level] += 1  # type: ignore[union-attr]
        elif kind is EngineStats:
            self.counts.engine_stats += 1
        elif kind is PromptChange:
            self.counts.prompt_changes += 1
        else:
            reason = outcome.reason  # type: ignore[union-attr]
            self.counts.unparsed[reason] = self.counts.unparsed.get(reason, 0) + 1
            if len(self._file_samples) < MAX_SAMPLES:
                text = record.get("log") if type(record.get("log")) is str else json.dumps(record, default=str)
                self._file_samples.append(Sample(path, line, reason, text[:SAMPLE_LENGTH].rstrip("\r\n")))

    def _sample(self, path: str, line: int, reason: str, text: str) -> None:
        if len(self.counts.samples) < MAX_SAMPLES:
            self.counts.samples.append(Sample(path, line, reason, text[:SAMPLE_LENGTH].rstrip("\r\n")))

    def finish(self) -> None:
        """Bring the columns' totals and the samples up to date (call before summarising)."""
        self.columns.flush()
        for sample in self._file_samples:  # records given to record() outside read()
            self._sample(sample.path, sample.line, sample.reason, sample.text)
        self._file_samples = []


def _describe(exc: BaseException, compressed: bool) -> str:
    if isinstance(exc, EOFError) and compressed:
        return "truncated gzip file: the compressed stream ends before its end marker"
    if isinstance(exc, (zlib.error, EOFError)) or type(exc).__name__ == "BadGzipFile":
        return f"corrupt gzip data: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
