"""Our own exposition renderer: the Prometheus text format 0.0.4 and OpenMetrics 1.0 (with exemplars).

Why not prometheus-client's ``generate_latest``: it validates and escapes
every label name of every sample and sorts each sample's label dict, at
scrape time. At the ``max_series`` cap (2000 request label sets, ~150
samples each) that took 3 s (text) and 10 s (OpenMetrics), past Prometheus'
default 10 s scrape timeout, and slowed record intake while it ran. Here the
work moves to where it is done once:

- :func:`label_block` renders a series' labels (``a="x",b="y"``: sorted by
  name, names escaped, values escaped) when the series is created; the
  caller stores the string;
- at scrape time a :class:`Writer` formats numbers only: one f-string per
  sample, with per-family prefixes (``name_bucket{``...) built in
  :meth:`Writer.family` and per-series ones (the bucket line's text around
  ``le``) built once per histogram call.

The output is byte for byte what prometheus-client writes for the same
families (``tests/metrics/test_exposition.py`` asserts it), so anything that
parses prometheus-client's output parses ours: labels in name order (``le``
in its sorted place), numbers as its ``floatToGoString`` writes them
(``1.0``, ``+Inf``, ``NaN``, ``1.5e+06``), timestamps in milliseconds (text)
or seconds (OpenMetrics). Two deliberate differences, both where
prometheus-client's output is not usable anyway: a native-histogram sample
is left out of the text format too (prometheus-client's text writer fails on
it; its OpenMetrics 1.0 writer leaves it out), and an OpenMetrics sample
name is escaped like its family name (prometheus-client rewrites a ``:`` in
sample names only, so its ``# TYPE a:b`` family parses back empty, beside an
untyped family ``a_b``). Neither case occurs in the receiver's families.

Families that a collector builds as prometheus-client ``Metric`` objects
(process metrics, GPU, receiver counters) go through :meth:`Writer.metric`,
the generic path, which renders any family prometheus-client can. A
collector with an ``expose(writer)`` method, registered in a
:class:`Registry`, writes its families through the fast methods instead
(:func:`generate`).

This module imports nothing of ours: it sits below every collector.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Any, Protocol

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as CONTENT_TYPE_OPENMETRICS,
)
from prometheus_client.openmetrics.exposition import (
    UNDERSCORES,
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.registry import DuplicateTimeseries
from prometheus_client.utils import floatToGoString

__all__ = [
    "Format",
    "Registry",
    "Writer",
    "escape_label_value",
    "generate",
    "label_block",
    "negotiate",
    "render",
]


class Format(enum.Enum):
    """An exposition format; ``content_type`` is its ``Content-Type`` header."""

    TEXT = CONTENT_TYPE_PLAIN_0_0_4
    OPENMETRICS = CONTENT_TYPE_OPENMETRICS

    @property
    def content_type(self) -> str:
        return str(self.value)


def negotiate(accept_header: str) -> Format:
    """The format prometheus-client's ``choose_encoder`` picks for this ``Accept`` header.

    OpenMetrics when ``application/openmetrics-text`` is accepted (without a
    version, or version 1.0.0 or later), else the text format. The name
    escaping a client may ask for is not followed: every name we write is a
    legacy Prometheus name, which every escaping leaves as it is; others are
    escaped with underscores, as prometheus-client does by default.
    """
    _, content_type = choose_encoder(accept_header or "")
    if content_type.startswith("application/openmetrics-text"):
        return Format.OPENMETRICS
    return Format.TEXT


# -- names, label values and numbers ---------------------------------------------------

#: Escaped metric and label names, memoised: names come from code, so a few
#: hundred at most; the bound only guards against a collector that makes
#: names from data (past it, names are escaped each time, still correctly).
MAX_CACHED_NAMES = 4096
_metric_names: dict[str, str] = {}
_label_names: dict[str, str] = {}


def _cached(cache: dict[str, str], escape: Callable[[str, Any], str], name: str) -> str:
    out = cache.get(name)
    if out is None:
        out = escape(name, UNDERSCORES)
        if len(cache) < MAX_CACHED_NAMES:
            cache[name] = out
    return out


def _metric_name(name: str) -> str:
    return _cached(_metric_names, escape_metric_name, name)


def _label_name(name: str) -> str:
    return _cached(_label_names, escape_label_name, name)


def escape_label_value(value: str) -> str:
    """``value`` as it goes between the quotes of a label: ``\\``, ``"`` and newline backslash-escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_block(names: Sequence[str], values: Sequence[str]) -> str:
    """The labels of one series as the exposition writes them, without braces: ``a="x",b="y"``.

    Sorted by name (as prometheus-client writes them, so that the output is
    the same byte for byte); ``''`` when there are no labels. Build it once,
    when the series is created, and pass it to the :class:`Writer` at every
    scrape. An info series' block includes its info labels; an exemplar's
    block is built the same way (OpenMetrics caps it at 128 characters,
    names and values together: that is the caller's to keep).
    """
    if len(names) != len(values):
        raise ValueError(f"{len(names)} label names but {len(values)} values")
    return ",".join([f'{_label_name(n)}="{escape_label_value(v)}"' for n, v in sorted(zip(names, values))])


def _labels(labels: dict[str, str]) -> str:
    """A sample's label dict as a block (the generic path)."""
    return ",".join([f'{_label_name(n)}="{escape_label_value(v)}"' for n, v in sorted(labels.items())])


#: Integers written as ``f"{n}.0"``: exactly what ``floatToGoString`` writes
#: for them. Below -2**53 ``float()`` rounds; from 10**6 up Go (and so
#: floatToGoString) switches to an exponent.
_INT_LOW = -(2**53)
_GO_EXPONENT = 1_000_000
_NEG_INF = float("-inf")


def _fmt(value: Any) -> str:
    """``floatToGoString(value)``, without its cost for the common cases."""
    t = type(value)
    if t is int:
        if _INT_LOW < value < _GO_EXPONENT:
            return f"{value}.0"
    elif t is float and _NEG_INF < value < _GO_EXPONENT:  # NaN fails both comparisons
        return repr(value)
    return floatToGoString(value)


# -- the le label's place in a block ---------------------------------------------------------

#: One ``name="value"`` of a block; values may hold escaped quotes.
_LABEL = re.compile(r'([^=,"]+)="(?:[^"\\]|\\.)*"', re.DOTALL)
#: Blocks whose split around ``le`` is remembered. A split is reused at every
#: scrape of a histogram series; 65536 covers 8 times the default cap of
#: 2000 request label sets with room for churn, ~20 MB at most. Past it the
#: memory is dropped and splits are made again (a regex over the block).
MAX_CACHED_SPLITS = 65536
_splits: dict[str, tuple[str, str]] = {}


def _le_split(block: str) -> tuple[str, str]:
    """``(before, after)``: the bucket line is ``{before}le="…"{after}``, ``le`` in its sorted place."""
    split = _splits.get(block)
    if split is not None:
        return split
    at = len(block)
    for m in _LABEL.finditer(block):
        if m.group(1) > "le":
            at = m.start()
            break
    if at == 0:
        split = ("", "," + block)
    elif at == len(block):
        split = (block + ",", "")
    else:  # block[:at] ends with the comma before the label that follows le
        split = (block[:at], "," + block[at:])
    if len(_splits) >= MAX_CACHED_SPLITS:
        _splits.clear()
    _splits[block] = split
    return split


# -- the writer ---------------------------------------------------------------------------------

_KINDS = ("counter", "gauge", "histogram", "info")
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "info": "gauge",
               "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped",
               "summary": "summary"}
_TEXT_SUFFIX = {"counter": "_total", "info": "_info"}
#: Sample suffixes the text format moves into a gauge family of their own
#: (OpenMetrics-only samples), as prometheus-client does.
_TEXT_MOVED = ("_created", "_gsum", "_gcount")
#: Chunks (a histogram series, a counter line, a family header...) gathered
#: before they are joined and encoded into one piece of bytes. Each join and
#: encode is one C call that holds the GIL throughout; 512 chunks is at most
#: ~2 MB of text (histogram series of ~20 buckets), about a millisecond, well
#: under the interpreter's switch interval (5 ms), so the thread that takes
#: records keeps getting the GIL while a large scrape renders.
FLUSH_CHUNKS = 512

class Writer:
    """Accumulates one exposition as chunks of text; one instance per scrape.

    Call :meth:`family` to start a family, then the sample method of its kind
    (:meth:`counter`, :meth:`gauge`, :meth:`info`, :meth:`histogram`) once
    per series, or :meth:`metric` for a whole prometheus-client family;
    :meth:`getvalue` returns the exposition. The sample methods trust their
    caller (they do not check that the current family has their kind): they
    run hundreds of thousands of times per scrape.
    """

    __slots__ = ("format", "_om", "_chunks", "_add", "_pieces", "_sample", "_sample_bare",
                 "_bucket", "_bucket_bare", "_count", "_sum")

    def __init__(self, fmt: Format) -> None:
        self.format = fmt
        self._om = fmt is Format.OPENMETRICS
        self._chunks: list[str] = []
        self._add = self._chunks.append
        self._pieces: list[bytes] = []
        self._sample = self._sample_bare = ""
        self._bucket = self._bucket_bare = self._count = self._sum = ""

    # -- families -------------------------------------------------------------------------

    def family(self, name: str, kind: str, help: str, unit: str = "") -> None:  # noqa: A002 - the format's word
        """Start a family: writes ``# HELP`` and ``# TYPE`` (and ``# UNIT`` in OpenMetrics).

        ``name`` and ``unit`` as prometheus-client's ``*MetricFamily`` take
        them: a counter's ``_total`` is dropped and the unit appended when
        the name does not end with it; ``kind`` is one of counter, gauge,
        histogram, info.
        """
        if kind not in _KINDS:
            raise ValueError(f"unknown family kind {kind!r}; one of {', '.join(_KINDS)}")
        if kind == "counter" and name.endswith("_total"):
            name = name[:-6]
        if unit and not name.endswith("_" + unit):
            name += "_" + unit
        name = _metric_name(name)
        self._flush_if_due()
        if self._om:
            doc = help.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
            self._add(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
            if unit:
                self._add(f"# UNIT {name} {unit}\n")
        else:
            doc = help.replace("\\", "\\\\").replace("\n", "\\n")
            head = name + _TEXT_SUFFIX.get(kind, "")
            self._add(f"# HELP {head} {doc}\n# TYPE {head} {_TEXT_TYPES[kind]}\n")
        sample = name + _TEXT_SUFFIX.get(kind, "")
        self._sample = sample + "{"
        self._sample_bare = sample + " "
        self._bucket = name + "_bucket{"
        self._bucket_bare = name + '_bucket{le="'
        self._count = name + "_count"
        self._sum = name + "_sum"

    # -- samples of the current family ---------------------------------------------------------

    def counter(self, block: str, value: float | int) -> None:
        """One series of the current counter family (``name_total``)."""
        if type(value) is int and _INT_LOW < value < _GO_EXPONENT:
            self._line(block, f"{value}.0")
        else:
            self._line(block, _fmt(value))

    def gauge(self, block: str, value: float | int) -> None:
        """One series of the current gauge family."""
        if type(value) is float and _NEG_INF < value < _GO_EXPONENT:
            self._line(block, repr(value))
        else:
            self._line(block, _fmt(value))

    def info(self, block: str) -> None:
        """One series of the current info family (``name_info``, value 1); ``block`` has the info labels."""
        self._line(block, "1.0")

    def _line(self, block: str, value: str) -> None:
        if block:
            self._add(f"{self._sample}{block}}} {value}\n")
        else:
            self._add(f"{self._sample_bare}{value}\n")
        if len(self._chunks) >= FLUSH_CHUNKS:
            self._flush()

    def histogram(self, block: str, les: Sequence[str], counts: Sequence[int], sum_: float,
                  exemplars: Sequence[tuple[str, float, float | None] | None] | None = None) -> None:
        """One series of the current histogram family: cumulative ``_bucket`` lines, ``_count``, ``_sum``.

        ``counts`` are per bucket (not cumulative), one per ``les`` entry
        (Python ints take the fast path; a numpy array is converted);
        ``les`` are the bounds as written (``"0.05"``, ..., ``"+Inf"``).
        ``exemplars`` (OpenMetrics only; ignored in text): per bucket
        ``None`` or ``(exemplar_label_block, value, timestamp or None)``.
        A cumulative count from 10**6 up is written as prometheus-client
        writes it (``1.5e+06``); with negative counts (not a histogram) one
        may be written as a plain integer instead, the same value.
        """
        if type(counts) is not list and hasattr(counts, "tolist"):
            counts = counts.tolist()  # a numpy array: Python ints format on the fast path below
        cum = list(accumulate(counts))
        last = cum[-1] if cum else 0
        if block:
            split = _splits.get(block) or _le_split(block)
            head = f"{self._bucket}{split[0]}le=\""
            tail = f"\"{split[1]}}} "
            count = f"{self._count}{{{block}}} "
            total = f"{self._sum}{{{block}}} "
        else:
            head = self._bucket_bare
            tail = '"} '
            count = self._count + " "
            total = self._sum + " "
        # Counts are counts (>= 0): the cumulative ones then lie between the first and the last.
        fast = type(last) is int and last < _GO_EXPONENT and bool(cum) and cum[0] >= 0
        if exemplars is None or not self._om:
            if fast:
                body = "".join([f"{head}{le}{tail}{n}.0\n" for le, n in zip(les, cum)])
            else:
                body = "".join([f"{head}{le}{tail}{_fmt(n)}\n" for le, n in zip(les, cum)])
        else:
            marks = [_exemplar(ex) for ex in exemplars]
            if fast:
                body = "".join([f"{head}{le}{tail}{n}.0{x}\n" for le, n, x in zip(les, cum, marks)])
            else:
                body = "".join([f"{head}{le}{tail}{_fmt(n)}{x}\n" for le, n, x in zip(les, cum, marks)])
        if fast:
            self._add(f"{body}{count}{last}.0\n{total}{_fmt(sum_)}\n")
        else:
            self._add(f"{body}{count}{_fmt(last)}\n{total}{_fmt(sum_)}\n")
        if len(self._chunks) >= FLUSH_CHUNKS:
            self._flush()

    # -- the generic path --------------------------------------------------------------------------

    def metric(self, family: Metric) -> None:
        """Write a prometheus-client family exactly as prometheus-client's writer of this format would."""
        self._flush_if_due()
        if self._om:
            self._metric_openmetrics(family)
        else:
            self._metric_text(family)

    def _metric_text(self, metric: Metric) -> None:
        base, mtype = metric.name, metric.type
        name = _metric_name(base + _TEXT_SUFFIX.get(mtype, ""))
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        add = self._add
        add(f"# HELP {name} {doc}\n# TYPE {name} {_TEXT_TYPES[mtype]}\n")
        moved_names = {base + suffix: suffix for suffix in _TEXT_MOVED}
        moved: dict[str, list[str]] = {}
        for s in metric.samples:
            if s.native_histogram is not None:
                continue  # not in the text format (prometheus-client's text writer fails on it)
            labels = s.labels
            sname = _metric_name(s.name)
            head = f"{sname}{{{_labels(labels)}}} " if labels else sname + " "
            if s.timestamp is None:
                line = f"{head}{_fmt(s.value)}\n"
            else:
                line = f"{head}{_fmt(s.value)} {int(float(s.timestamp) * 1000):d}\n"
            suffix = moved_names.get(s.name)
            if suffix is None:
                add(line)
            else:
                moved.setdefault(suffix, []).append(line)
            if len(self._chunks) >= FLUSH_CHUNKS:
                self._flush()
        for suffix, lines in sorted(moved.items()):
            name = _metric_name(base + suffix)
            add(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
            add("".join(lines))

    def _metric_openmetrics(self, metric: Metric) -> None:
        name = _metric_name(metric.name)
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        add = self._add
        add(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
        if metric.unit:
            add(f"# UNIT {name} {metric.unit}\n")
        for s in metric.samples:
            if s.native_histogram is not None:
                continue  # OpenMetrics 1.0 has no native histograms; prometheus-client leaves them out too
            labels = s.labels
            sname = _metric_name(s.name)
            head = f"{sname}{{{_labels(labels)}}} " if labels else sname + " "
            value = "" if s.value is None else _fmt(s.value)
            ts = "" if s.timestamp is None else f" {s.timestamp}"
            ex = s.exemplar
            if ex:
                if not _exemplar_allowed(metric, s.name):
                    raise ValueError(f"Metric {metric.name} has exemplars, but is not a histogram bucket or counter")
                ex_labels = ",".join([f'{k}="{escape_label_value(v)}"' for k, v in sorted(ex.labels.items())])
                if ex.timestamp is None:
                    add(f"{head}{value}{ts} # {{{ex_labels}}} {_fmt(ex.value)}\n")
                else:
                    add(f"{head}{value}{ts} # {{{ex_labels}}} {_fmt(ex.value)} {ex.timestamp}\n")
            else:
                add(f"{head}{value}{ts}\n")
            if len(self._chunks) >= FLUSH_CHUNKS:
                self._flush()

    # -- output ------------------------------------------------------------------------------------

    def _flush_if_due(self) -> None:
        if len(self._chunks) >= FLUSH_CHUNKS:
            self._flush()

    def _flush(self) -> None:
        if self._chunks:
            self._pieces.append("".join(self._chunks).encode("utf-8"))
            self._chunks.clear()

    def pieces(self) -> list[bytes]:
        """The exposition as UTF-8 pieces of at most :data:`FLUSH_CHUNKS` chunks each, in order.

        What a server writes (or compresses) piece by piece: no single C call
        then holds the GIL for the whole exposition, as ``b"".join`` of tens
        of megabytes does (~50 ms at the cap). An OpenMetrics exposition's
        last piece is ``# EOF``.
        """
        self._flush()
        return self._pieces + [b"# EOF\n"] if self._om else list(self._pieces)

    def getvalue(self) -> bytes:
        """The whole exposition, UTF-8; an OpenMetrics one ends with ``# EOF``."""
        return b"".join(self.pieces())


def _exemplar(ex: tuple[str, float, float | None] | None) -> str:
    """The text an exemplar adds to its bucket line (``''`` for none), as prometheus-client writes it."""
    if ex is None:
        return ""
    block, value, ts = ex
    if ts is None:
        return f" # {{{block}}} {_fmt(value)}"
    return f" # {{{block}}} {_fmt(value)} {ts}"


def _exemplar_allowed(metric: Metric, sample: str) -> bool:
    """Where OpenMetrics allows an exemplar: counter ``_total``, histogram buckets (and a native histogram)."""
    kind = metric.type
    if kind == "counter":
        return sample.endswith("_total")
    if kind == "gaugehistogram":
        return sample.endswith("_bucket")
    if kind == "histogram":
        return sample.endswith("_bucket") or sample == metric.name
    return False


# -- registry and rendering --------------------------------------------------------------------------


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


#: Sample names a family of each type takes besides its own name; two
#: collectors that describe the same name cannot both be registered (as in
#: prometheus-client's CollectorRegistry).
_TYPE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}


class Registry:
    """Our collector registry: ``register()``/``unregister()``/``collect()`` as prometheus-client's.

    It keeps the collectors in registration order so that :func:`generate`
    can call each one's fast path (``expose(writer)``); ``collect()`` makes
    it a prometheus-client collector too (``generate_latest(registry)``
    works on it). A collector with a ``describe()`` has its names checked
    for clashes at registration, as prometheus-client does; one without is
    not described by collecting it (its families may be expensive to build).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._collectors: list[tuple[Any, tuple[str, ...]]] = []

    def register(self, collector: Any) -> None:
        """Add ``collector``; ``ValueError`` if it is registered already or its names clash."""
        names = self._names(collector)
        with self._lock:
            if any(c is collector for c, _ in self._collectors):
                raise ValueError(f"collector already registered: {collector!r}")
            taken = {n for _, ns in self._collectors for n in ns}
            duplicates = taken.intersection(names)
            if duplicates:
                raise DuplicateTimeseries(duplicates)
            self._collectors.append((collector, names))

    def unregister(self, collector: Any) -> None:
        """Remove ``collector``; ``KeyError`` if it is not registered."""
        with self._lock:
            for i, (c, _) in enumerate(self._collectors):
                if c is collector:
                    del self._collectors[i]
                    return
        raise KeyError(collector)

    def collectors(self) -> list[Any]:
        """The registered collectors, in registration order (a snapshot)."""
        with self._lock:
            return [c for c, _ in self._collectors]

    def collect(self) -> Iterator[Metric]:
        """Every family of every collector, in registration order."""
        for collector in self.collectors():
            yield from collector.collect()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample, or ``None`` (slow: collects everything; for tests)."""
        labels = labels or {}
        for metric in self.collect():
            for s in metric.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None

    @staticmethod
    def _names(collector: Any) -> tuple[str, ...]:
        describe = getattr(collector, "describe", None)
        if describe is None:
            return ()
        names: list[str] = []
        for metric in describe():
            names.append(metric.name)
            names.extend(metric.name + suffix for suffix in _TYPE_SUFFIXES.get(metric.type, ()))
        return tuple(names)


def render(registry: Registry | Collector, fmt: Format) -> list[bytes]:
    """Render ``registry`` in ``fmt``, as the pieces :meth:`Writer.pieces` returns.

    For a :class:`Registry`: each collector that has ``expose(writer)``
    writes itself through the fast methods; the others' ``collect()``
    families go through :meth:`Writer.metric`. Any other registry (a
    prometheus-client ``CollectorRegistry``) is rendered from its
    ``collect()``.
    """
    writer = Writer(fmt)
    if isinstance(registry, Registry):
        for collector in registry.collectors():
            expose = getattr(collector, "expose", None)
            if expose is not None:
                expose(writer)
            else:
                for family in collector.collect():
                    writer.metric(family)
    else:
        for family in registry.collect():
            writer.metric(family)
    return writer.pieces()


def generate(registry: Registry | Collector, fmt: Format) -> bytes:
    """Render ``registry`` in ``fmt`` into one ``bytes`` (see :func:`render`)."""
    return b"".join(render(registry, fmt))
