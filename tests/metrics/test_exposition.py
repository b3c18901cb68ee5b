"""Our exposition writer against prometheus-client's own, on real families.

The reference is always prometheus-client, computed in the same test on the
same families: its ``generate_latest`` (text 0.0.4) and its OpenMetrics
``generate_latest`` for the bytes, its two parsers for the samples. Ours must
write the same bytes (the module promises it, so it is asserted), and parse
back to the same families and samples. The families come from an
``LLMMetrics`` fed a few hundred varied outcomes (label values with quotes,
backslashes, newlines and non-ASCII; exemplars; zero-filled statuses), the
receiver's collector, the GPU collector over the fake NVML, and
prometheus-client's own process collector and metric classes (summaries,
infos, enums, timestamps, ``_created``, statesets, gauge histograms).
Collectors whose values move between two collections (process, GPU, the
client's ``_created``) are frozen: collected once, replayed.

``promtool check metrics`` (Debian's 2.42) reads the text format only; the
OpenMetrics output is checked by prometheus-client's OpenMetrics parser
(strict: it rejects a family whose samples do not fit its type) and by the
real Prometheus scrape in tests/prometheus/.
"""

from __future__ import annotations

import gzip
import math
import random
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    Summary,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import DuplicateTimeseries
from prometheus_client.samples import Exemplar, NativeHistogram, Sample, Timestamp
from prometheus_client.utils import floatToGoString

from qwen_fluent.gpu import GpuCollector
from qwen_fluent.metrics import LLMMetrics, MetricsConfig, ReceiverCollector
from qwen_fluent.metrics.exposition import (
    Format,
    Registry,
    Writer,
    escape_label_value,
    generate,
    label_block,
    negotiate,
    render,
)
from qwen_fluent.records import EngineStats, LogEvent, PromptChange, RequestEvent, Source, Unrecognised
from qwen_fluent.server.http import MetricsHTTPServer
from qwen_fluent.stats import ReceiverStats
from tests.support.fake_nvml import FakeNvml
from tests.support.prometheus import require_binary
from tests.support.replay import Replay

#: Label values that need escaping or are not ASCII, mixed into every label.
AWKWARD = ['say "hi"', "back\\slash", "new\nline", "ünïcødé ✓ 模型", "trailing\\", 'a,b="c"}', '\\"\n', "plain"]
STATUSES = ("success", "error", "timeout", "client_error", "cancelled", "unknown")
LEVELS = ("debug", "info", "warning", "error", "critical", "unknown")
TEAM_KEY = "app.kubernetes.io/team"


# -- real families ---------------------------------------------------------------------------------


def fed_metrics(seed: int = 7, outcomes: int = 300) -> LLMMetrics:
    """An LLMMetrics after ``outcomes`` varied outcomes of every kind, with awkward label values."""
    rng = random.Random(seed)
    metrics = LLMMetrics(MetricsConfig(pod_labels={"team": TEAM_KEY}, exemplars=True, zero_fill_statuses=True))

    # Six pods, each with awkward values somewhere: ~100 request label sets (statuses zero-filled).
    pods = [Source(rng.choice(["ml", 'ns"q']), f"pod-{i}{rng.choice(['', 'é'])}", rng.choice(["vllm", "tgi\\x"]),
                   "node-1", {TEAM_KEY: team}) for i, team in enumerate(AWKWARD[:6])]

    def source() -> Source:
        return rng.choice(pods)

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.15 else value

    for i in range(outcomes):
        kind = rng.random()
        if kind < 0.7:
            total = rng.lognormvariate(0, 1.2)
            queue = total * rng.random() * 0.3
            out_tokens = rng.randint(1, 4096)
            metrics.observe(RequestEvent(
                rng.choice(STATUSES), rng.choice(["/v1/chat/completions", "/v1/completions", rng.choice(AWKWARD)]),
                rng.choice(["qwen2.5-7b", 'model "x"', "模型\n2"]), rng.choice([f"req-{i}", f'id-"{i}"\\\n', ""]),
                "POST", maybe(rng.randint(1, 200_000)), maybe(out_tokens), maybe(total), maybe(queue),
                maybe(total - queue), maybe(queue + 0.01), maybe((total - queue) / out_tokens),
                maybe(rng.random() * 2**36),
                200, "", rng.choice([None, 1.7e9 + i, 1.7e9 + i + 0.123]), source()))
        elif kind < 0.8:
            metrics.observe(LogEvent(rng.choice(LEVELS), source()))
        elif kind < 0.9:
            metrics.observe(EngineStats(maybe(rng.random() * 1e4), maybe(rng.random() * 1e3), maybe(rng.randint(0, 64)),
                                        maybe(rng.randint(0, 64)), maybe(0), maybe(rng.random()), maybe(0.0),
                                        maybe(rng.random()), rng.choice(["qwen2.5-7b", "模型\n2"]), source(),
                                        rng.choice(["", "0", "1"])))
        elif kind < 0.95:
            digest = f"sha256:{rng.getrandbits(64):016x}"
            metrics.observe(PromptChange(digest, rng.choice(["qwen2.5-7b", 'm"']), source()))
        else:
            metrics.observe(Unrecognised(rng.choice(["no_message", "not_a_map", 'free "text"\n']), source()))
    return metrics


def fed_stats() -> ReceiverStats:
    stats = ReceiverStats()
    stats.connections_opened["tcp"] += 3
    stats.records["accepted"] += 1234567  # past 10**6: Go's exponent form
    stats.records["invalid"] += 2
    stats.errors['bad "frame"\n'] += 1
    stats.bytes_received += 98765432101
    return stats


class Frozen:
    """A collector's families, collected once and replayed: for collectors whose values move."""

    def __init__(self, collector: Any) -> None:
        self.families = list(collector.collect())

    def collect(self) -> list[Metric]:
        return self.families


class Timestamped:
    """Families of every type prometheus-client has, with sample timestamps, ``_created`` and exemplars."""

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("jobs_total", 'Jobs, "quoted" help\nand a second line\\.', labels=("queue",),
                                  unit="")
        fam.add_metric(["a\nb"], 3, created=1.7e9, timestamp=1.7e9 + 0.5)
        fam.add_metric(["ü"], 4.5, timestamp=Timestamp(1700000000, 123456789))
        # (no '"' in this one: prometheus-client's parser misreads some quoted exemplar values, its
        # own output included; request ids with quotes are exercised in the LLM families)
        fam.add_metric(["ex"], 7, exemplar=Exemplar({"trace_id": "x\\y\n"}, 1.0, 1.7e9))
        fam.add_metric(["none"], 0, exemplar=Exemplar({"trace_id": "z"}, 2.5))
        yield fam
        gauge = GaugeMetricFamily("temperature_celsius", "A gauge with timestamps.", labels=("room",), unit="celsius")
        gauge.add_metric(["kitchen"], -3.25, timestamp=1.7e9)
        gauge.add_metric(["hall"], float("nan"))
        gauge.add_metric(["attic"], float("inf"))
        gauge.add_metric(["cellar"], 12345678.9)
        yield gauge
        yield UnknownMetricFamily("mystery", "Untyped in the text format.", value=42)
        summary = SummaryMetricFamily("latency_seconds", "A summary.", labels=("op",))
        summary.add_metric(["read"], count_value=10, sum_value=1.5, timestamp=1.7e9)
        yield summary
        hist = GaugeHistogramMetricFamily("queue_depth", "A gauge histogram.", labels=("q",))
        hist.add_metric(["a"], [("1.0", 2), ("+Inf", 5)], gsum_value=7.5)
        yield hist
        yield StateSetMetricFamily("mode", "A stateset.", value={"on": True, "off": False})
        yield InfoMetricFamily("build", "An info.", value={"version": '1.2 "beta"'})
        with_ts = HistogramMetricFamily("sizes_bytes", "A histogram with a timestamp.", unit="bytes")
        with_ts.add_metric([], [("1024.0", 1), ("+Inf", 3)], sum_value=5000, timestamp=1.7e9)
        yield with_ts


def client_registry() -> CollectorRegistry:
    """prometheus-client's own metric classes and process collector, with awkward values."""
    reg = CollectorRegistry()
    c = Counter("client_requests", "Requests.", ["method", "note"], registry=reg)
    c.labels("GET", 'a "b"').inc(2)
    c.labels("POST", "x\\y\nz").inc(0.5, exemplar={"trace_id": "abc"})
    h = Histogram("client_latency_seconds", "Latency.", ["route"], registry=reg, buckets=(0.1, 1.0, 2.5e6))
    for v in (0.05, 0.7, 3.0, 1e7):
        h.labels("/ü").observe(v)
    h.labels("/x").observe(0.2, exemplar={"trace_id": "t-1"})
    s = Summary("client_size_bytes", "Sizes.", registry=reg)
    s.observe(512)
    Info("client_build", "Build.", registry=reg).info({"version": "1.0", "branch": 'main "x"'})
    e = Enum("client_state", "State.", states=["starting", "running", "stopped"], registry=reg)
    e.state("running")
    g = Gauge("client_queue", "Queue.", registry=reg)
    g.set(17)
    ProcessCollector(registry=reg)
    reg.register(Timestamped())
    return reg


@pytest.fixture
def gpu() -> Iterator[GpuCollector]:
    collector = GpuCollector(nvml=FakeNvml(), process_attribution=False)
    collector.start()
    yield collector
    collector.close()


@pytest.fixture
def registry(gpu: GpuCollector) -> Registry:
    """Our registry as the receiver builds it, plus GPU and client families; deterministic between scrapes."""
    reg = Registry()
    reg.register(fed_metrics())
    reg.register(ReceiverCollector(fed_stats()))
    reg.register(Frozen(gpu))
    reg.register(Frozen(client_registry()))
    return reg


# -- comparing parsed families ---------------------------------------------------------------------


def _value(v: Any) -> Any:
    """A sortable stand-in: NaN equals NaN and sorts after every number (two series may differ only by it)."""
    return (1, 0.0) if isinstance(v, float) and math.isnan(v) else (0, v)


def _sample(s: Sample) -> tuple:
    ex = s.exemplar
    exemplar = None if ex is None else (sorted(ex.labels.items()), _value(ex.value), ex.timestamp)
    return (s.name, sorted(s.labels.items()), _value(s.value), s.timestamp, exemplar)


def families_of(parsed: Iterable[Metric]) -> list[tuple]:
    """Parsed families as a sorted, comparable list (NaN compares equal to NaN)."""
    return sorted((f.name, f.type, f.documentation, f.unit, sorted(map(_sample, f.samples))) for f in parsed)


# -- 1 and 2: the same bytes and samples as prometheus-client ----------------------------------------


def test_text_is_prometheus_clients_byte_for_byte(registry: Registry) -> None:
    ours = generate(registry, Format.TEXT)
    theirs = generate_latest(registry)  # prometheus-client renders our Registry as any collector
    assert ours == theirs
    parsed = families_of(parse_text(ours.decode()))
    assert parsed == families_of(parse_text(theirs.decode()))
    names = {f[0] for f in parsed}
    assert {"qwen_request_duration_seconds", "qwen_requests", "qwen_system_prompt_info", "qwen_fluent_records",
            "process_cpu_seconds", "client_latency_seconds", "jobs_created", "queue_depth_gsum"} <= names
    assert any(n.startswith("qwen_gpu_") for n in names)
    values = {v for f in parsed for (_, labels, *_rest) in f[4] for _, v in labels}
    assert set(AWKWARD) <= values  # every awkward value went through and came back


def test_openmetrics_is_prometheus_clients_byte_for_byte_with_exemplars(registry: Registry) -> None:
    ours = generate(registry, Format.OPENMETRICS)
    theirs = generate_openmetrics(registry)
    assert ours == theirs and ours.endswith(b"\n# EOF\n")
    parsed = families_of(parse_openmetrics(ours.decode()))
    assert parsed == families_of(parse_openmetrics(theirs.decode()))
    exemplars = [s[4] for f in parsed for s in f[4] if s[4] is not None]
    request_ids = {v for labels, _, _ in exemplars for k, v in labels if k == "request_id"}
    assert len(request_ids) > 10 and any('"' in r for r in request_ids)
    assert {f[3] for f in parsed} >= {"seconds", "bytes", "celsius"}  # # UNIT lines


def test_text_ignores_exemplars_and_keeps_created_apart(registry: Registry) -> None:
    text = generate(registry, Format.TEXT).decode()
    assert "request_id" not in text and " # {" not in text
    assert "# TYPE jobs_created gauge" in text and "# TYPE jobs_total counter" in text


# -- the fast path: pre-built blocks, numbers formatted at scrape time --------------------------------


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name)
def test_the_fast_path_writes_what_prometheus_client_writes(registry: Registry, fmt: Format) -> None:
    families = list(registry.collect())
    replay = Replay(families)
    fast = sum(rows is not None for _, rows in replay.plan)
    assert fast > 20  # most families (all the qwen ones) took the fast path
    ours = Registry()
    ours.register(replay)
    reference = generate_latest(replay) if fmt is Format.TEXT else generate_openmetrics(replay)
    assert generate(ours, fmt) == reference


def test_histograms_without_labels_stay_valid() -> None:
    fam = HistogramMetricFamily("bare_seconds", "No labels.", unit="seconds")
    fam.add_metric([], [("0.5", 1), ("1.0", 1), ("+Inf", 3)], sum_value=4.25)
    for fmt, reference, parse in ((Format.TEXT, generate_latest, parse_text),
                                  (Format.OPENMETRICS, generate_openmetrics, parse_openmetrics)):
        writer = Writer(fmt)
        writer.family("bare_seconds", "histogram", "No labels.", "seconds")
        writer.histogram("", ["0.5", "1.0", "+Inf"], [1, 0, 2], 4.25)
        ours = writer.getvalue()
        assert ours == reference(_Collector([fam]))
        assert 'bare_seconds_bucket{le="0.5"} 1.0\n' in ours.decode() and "bare_seconds_count 3.0\n" in ours.decode()
        assert families_of(parse(ours.decode())) == families_of(parse(reference(_Collector([fam])).decode()))


class _Collector:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


# -- 3. promtool, and the property test ----------------------------------------------------------------------


def test_promtool_accepts_our_text(registry: Registry) -> None:
    promtool = require_binary("promtool")
    body = generate(registry, Format.TEXT)
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


label_names = st.lists(st.sampled_from(["a", "Z", "_x", "l", "la", "le_x", "lf", "model", "pod", "zz", "status"]),
                       unique=True, max_size=5)
label_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(AWKWARD)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60) | st.sampled_from(
    [0, 1, 999_999, 1_000_000, 1e6, 123456.789, 1e16, 2.0**53, -0.0, 1e-7])
counts = st.integers(0, 10) | st.integers(0, 2**62) | st.sampled_from([999_999, 1_000_000])
timestamps = st.none() | st.floats(0, 4e9) | st.integers(0, 4_000_000_000)


@st.composite
def families(draw: st.DrawFn) -> list[tuple[str, dict[str, str], Any]]:
    """(kind, labels, payload) rows: payload is a value, or (bounds, per-bucket counts, sum, exemplars)."""
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        names = draw(label_names)
        labels = {n: draw(label_values) for n in names}
        kind = draw(st.sampled_from(["counter", "gauge", "info", "histogram"]))
        if kind == "histogram":
            bounds = sorted(set(draw(st.lists(st.floats(-1e9, 1e9, allow_nan=False), max_size=6))))
            les = [floatToGoString(b) for b in bounds] + ["+Inf"]
            per = draw(st.lists(counts, min_size=len(les), max_size=len(les)))
            exemplars = draw(st.lists(st.none() | st.tuples(label_values, numbers, timestamps),
                                      min_size=len(les), max_size=len(les)))
            rows.append((kind, labels, (les, per, draw(numbers), exemplars)))
        elif kind == "info":
            rows.append((kind, labels, {"version": draw(label_values)}))
        else:
            rows.append((kind, labels, draw(numbers)))
    return rows


def _client_family(kind: str, labels: dict[str, str], payload: Any) -> Metric:
    names = list(labels)
    if kind == "histogram":
        les, per, sum_, exemplars = payload
        fam = HistogramMetricFamily("prop_seconds", "Property\n\\ \"test\".", labels=names, unit="seconds")
        acc = 0
        for le, n, ex in zip(les, per, exemplars):
            acc += n
            exemplar = None if ex is None else Exemplar({"request_id": ex[0]}, ex[1], ex[2])
            fam.samples.append(Sample(fam.name + "_bucket", {**labels, "le": le}, acc, None, exemplar))
        fam.samples.append(Sample(fam.name + "_count", dict(labels), acc))
        fam.samples.append(Sample(fam.name + "_sum", dict(labels), sum_))
        return fam
    if kind == "info":
        fam = InfoMetricFamily("prop", "Property info.", labels=names)
        fam.add_metric(list(labels.values()), payload)
        return fam
    family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    fam = family(f"prop_{kind}_total", "Property.", labels=names)
    fam.add_metric(list(labels.values()), payload)
    return fam


def _write(writer: Writer, kind: str, labels: dict[str, str], payload: Any) -> None:
    names, values = list(labels), list(labels.values())
    if kind == "histogram":
        les, per, sum_, exemplars = payload
        writer.family("prop_seconds", "histogram", "Property\n\\ \"test\".", "seconds")
        ex = [None if e is None else (label_block(["request_id"], [e[0]]), e[1], e[2]) for e in exemplars]
        writer.histogram(label_block(names, values), les, per, sum_, ex)
    elif kind == "info":
        writer.family("prop", "info", "Property info.")
        writer.info(label_block(names + list(payload), values + list(payload.values())))
    else:
        writer.family(f"prop_{kind}_total", kind, "Property.")
        (writer.counter if kind == "counter" else writer.gauge)(label_block(names, values), payload)


def _try_parse(parse: Any, text: str) -> list[tuple] | str:
    try:
        return families_of(parse(text))
    except ValueError as error:  # the OpenMetrics parser rejects e.g. a negative or NaN counter
        return f"rejected: {type(error).__name__}"


@settings(max_examples=300, deadline=None)
@given(families())
def test_any_labels_and_numbers_render_as_prometheus_client_renders_them(rows: list[tuple]) -> None:
    for fmt, reference, parse in ((Format.TEXT, generate_latest, parse_text),
                                  (Format.OPENMETRICS, generate_openmetrics, parse_openmetrics)):
        fast, generic = Writer(fmt), Writer(fmt)
        client = []
        for kind, labels, payload in rows:
            _write(fast, kind, labels, payload)
            fam = _client_family(kind, labels, payload)
            generic.metric(fam)
            client.append(fam)
        theirs = reference(_Collector(client))
        assert fast.getvalue() == theirs
        assert generic.getvalue() == theirs
        assert _try_parse(parse, fast.getvalue().decode()) == _try_parse(parse, theirs.decode())


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "le_x", "zz"]), label_values), unique_by=lambda t: t[0]))
def test_label_block_parses_back_to_its_values(pairs: list[tuple[str, str]]) -> None:
    names, values = [n for n, _ in pairs], [v for _, v in pairs]
    writer = Writer(Format.TEXT)
    writer.family("probe", "gauge", "Probe.")
    writer.gauge(label_block(names, values), 1)
    (family,) = parse_text(writer.getvalue().decode())
    assert family.samples[0].labels == dict(pairs)


def test_escape_label_value_escapes_the_three_characters() -> None:
    for value in AWKWARD:
        escaped = escape_label_value(value)
        assert "\n" not in escaped
        assert escaped.replace("\\\\", "").replace('\\"', "").replace("\\n", "").count("\\") == 0
        assert escaped.replace('\\"', "").count('"') == 0
    with pytest.raises(ValueError):
        label_block(["a", "b"], ["x"])


def test_deliberate_differences_from_prometheus_client() -> None:
    """Where prometheus-client's output is unusable, ours differs (module docstring): both cases here."""
    colon = _Collector([GaugeMetricFamily("a:b", "Recording-rule style name.", value=1)])
    theirs = list(parse_openmetrics(generate_openmetrics(colon).decode()))
    assert [(f.name, len(f.samples)) for f in theirs] == [("a:b", 0), ("a_b", 1)]  # its sample left its family
    ours = list(parse_openmetrics(generate(colon, Format.OPENMETRICS).decode()))
    assert [(f.name, f.type, [s.name for s in f.samples]) for f in ours] == [("a:b", "gauge", ["a:b"])]
    assert generate(colon, Format.TEXT) == generate_latest(colon)  # the text format agrees

    native = HistogramMetricFamily("native_seconds", "A native histogram sample.")
    native.add_sample("native_seconds", {}, None, native_histogram=NativeHistogram(3, 1.5, 0, 0.0, 1))
    native.add_sample("native_seconds_count", {}, 3)
    with pytest.raises(TypeError):
        generate_latest(_Collector([native]))  # prometheus-client's text writer fails on it
    assert generate(_Collector([native]), Format.TEXT).decode().splitlines()[2:] == ["native_seconds_count 3.0"]
    assert generate(_Collector([native]), Format.OPENMETRICS) == generate_openmetrics(_Collector([native]))


def test_unknown_family_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="summary"):
        Writer(Format.TEXT).family("x", "summary", "No fast path for summaries.")


def test_pieces_join_to_the_exposition(registry: Registry) -> None:
    for fmt in Format:
        pieces = render(registry, fmt)
        assert len(pieces) > 1  # large enough to be split
        assert b"".join(pieces) == generate(registry, fmt)


# -- negotiation, the registry -------------------------------------------------------------------------------

ACCEPT_HEADERS = [
    "",
    "*/*",
    "text/plain",
    "text/plain;version=0.0.4",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=0.0.1",
    "application/openmetrics-text;version=0.0.1,text/plain;version=0.0.4;q=0.5",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # Prometheus 2.42
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
    "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3",
    "text/plain;version=0.0.4,application/openmetrics-text;version=1.0.0",
    "application/json",
]


@pytest.mark.parametrize("accept", ACCEPT_HEADERS)
def test_negotiate_decides_as_prometheus_client(accept: str) -> None:
    _, content_type = choose_encoder(accept)
    expected = Format.OPENMETRICS if content_type.startswith("application/openmetrics-text") else Format.TEXT
    assert negotiate(accept) is expected
    assert negotiate(accept).content_type.split(";")[0] == content_type.split(";")[0]


def test_registry_calls_expose_and_never_collect_when_it_can() -> None:
    class FastOnly:
        def collect(self) -> list[Metric]:
            raise AssertionError("generate() must use expose()")

        def expose(self, writer: Writer) -> None:
            writer.family("fast", "counter", "From expose.")
            writer.counter(label_block(["k"], ["v"]), 5)

    reg = Registry()
    reg.register(FastOnly())
    reg.register(_Collector([GaugeMetricFamily("slow", "From collect.", value=2)]))
    assert generate(reg, Format.TEXT) == (b'# HELP fast_total From expose.\n# TYPE fast_total counter\n'
                                          b'fast_total{k="v"} 5.0\n'
                                          b"# HELP slow From collect.\n# TYPE slow gauge\nslow 2.0\n")


def test_registry_register_unregister_and_clashes() -> None:
    reg = Registry()
    stats = ReceiverCollector(ReceiverStats())
    first = _Collector([GaugeMetricFamily("one", "One.", value=1)])
    reg.register(first)
    reg.register(stats)
    assert reg.collectors() == [first, stats]
    with pytest.raises(ValueError):
        reg.register(first)
    with pytest.raises(DuplicateTimeseries):
        reg.register(ReceiverCollector(ReceiverStats()))  # describes the same names
    assert reg.get_sample_value("one") == 1.0
    reg.unregister(first)
    assert reg.collectors() == [stats] and reg.get_sample_value("one") is None
    with pytest.raises(KeyError):
        reg.unregister(first)
    assert generate(reg, Format.TEXT) == generate_latest(reg)


# -- 4. the endpoint serves both formats ----------------------------------------------------------------------


def _get(port: int, **headers: str) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers, response.read()


def test_the_endpoint_serves_our_renderer_by_accept_with_gzip(registry: Registry) -> None:
    prometheus = ACCEPT_HEADERS[9]
    with MetricsHTTPServer("127.0.0.1", 0, registry) as server:
        status, headers, body = _get(server.port)
        assert status == 200 and headers["Content-Type"] == Format.TEXT.content_type
        assert body == generate_latest(registry)
        status, headers, body = _get(server.port, Accept=prometheus)
        assert headers["Content-Type"] == Format.OPENMETRICS.content_type
        assert body == generate_openmetrics(registry)
        status, headers, zipped = _get(server.port, Accept=prometheus, **{"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) == len(zipped)
        assert gzip.decompress(zipped) == body and len(zipped) < len(body) / 4
