"""Any record gives exactly one well-formed outcome, and the normaliser never raises.

Hypothesis builds records the way msgpack can deliver them: keys of any
scalar type (many of them the keys the normaliser looks for), values of every
msgpack type (NaN, infinities, 64-bit integers, bytes, ext types, nested
maps and arrays), strings with lone surrogates (the wire decoder's
``surrogateescape``), and wrapped lines that are JSON, vLLM or TGI lines.
Each outcome is checked against the contract: fixed label sets, clean and
bounded strings, finite non-negative numbers.
"""

from __future__ import annotations

import copy
import json
import math

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_fluent.records import (
    LEVELS,
    STATUSES,
    UNRECOGNISED_REASONS,
    EngineStats,
    LogEvent,
    Normaliser,
    NormaliserConfig,
    PromptChange,
    RequestEvent,
    Source,
    Unrecognised,
    normalise,
)
from qwen_fluent.records.normaliser import REQUEST_KEYS
from qwen_fluent.records.status import METHODS

from .wire import decode

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KNOWN_KEYS = sorted(
    REQUEST_KEYS
    | {
        "kubernetes", "namespace_name", "pod_name", "container_name", "host", "labels", "log", "message",
        "log_processed", "level", "levelname", "severity", "span", "spans", "fields", "name", "event",
        "event_type", "system_prompt", "system_prompt_hash", "status", "http_status", "status_code", "path",
        "method", "model", "error", "error_type", "timestamp", "total_time", "time_per_token",
    }
)
LINES = [
    "INFO 04-05 10:23:47 [loggers.py:116] Engine 000: Avg prompt throughput: 1.0 tokens/s, Running: 1 reqs, "
    "GPU KV cache usage: 99.9%, Prefix cache hit rate: 100.0%",
    "Prefix cache hit rate: GPU: 45.67%, CPU: 0.00%",
    'INFO generate{total_time="1.2s" inference_time="1s" time_per_token="0ns"}: router: Success',
    'INFO chat_completions{total_time="99999999s" queue_time="1e400s"}: Success',
    'INFO:     10.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
    "I0405 10:23:47.123456 1 x.go:1] hi", "level=", "E", "", "   ", "{", "{}", "}", ',"a":1}',
    "1.2s", "850µs", "0ns", "200", "499", "success", "TIMEOUT", "2025-04-05T10:23:45Z", "sha256:" + "a" * 64,
    "\x1b[31mERROR\x1b[0m boom", "nan", "-1", "1e999",
]

surrogate_text = st.binary(max_size=24).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
texts = st.one_of(st.text(max_size=24), surrogate_text, st.sampled_from(LINES), st.sampled_from(KNOWN_KEYS))
# Any lone surrogate, as a JSON "\ud800" escape gives (msgpack cannot carry these).
any_surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4)
scalars = st.one_of(
    any_surrogates,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(),  # beyond 64 bits: json.loads can produce them
    st.floats(),
    texts,
    st.binary(max_size=16),
    st.builds(msgpack.ExtType, st.integers(min_value=1, max_value=127), st.binary(max_size=8)),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), texts, any_surrogates, st.integers(), st.binary(max_size=8), st.none(), st.floats())
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=16,
)
records = st.dictionaries(keys, values, max_size=12)

# What msgpack can carry: 64-bit integers; bytes become raw strings on the wire.
int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
wire_scalars = st.one_of(st.none(), st.booleans(), int64, st.floats(), texts, st.binary(max_size=16))
wire_keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.binary(max_size=8), int64)
wire_values = st.recursive(
    wire_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(wire_keys, children, max_size=5),
    max_leaves=16,
)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=24), st.sampled_from(LINES))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KNOWN_KEYS), children, max_size=4),
    max_leaves=12,
)
json_records = st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8)), json_values, max_size=10)
wrapped = st.builds(
    lambda inner, key, extra, cut: {key: json.dumps(inner)[:cut] if cut else json.dumps(inner), **extra},
    json_records,
    st.sampled_from(["log", "message", "log_processed"]),
    records,
    st.one_of(st.none(), st.integers(min_value=0, max_value=60)),
)


def clean(text: object, limit: int = 256) -> bool:
    if type(text) is not str or len(text) > limit:
        return False
    text.encode("utf-8")  # raises on a lone surrogate
    return text == text.strip()


def finite(value: object, *, integer: bool = False, ratio: bool = False) -> bool:
    if value is None:
        return True
    if integer:
        return type(value) is int and value >= 0
    return type(value) is float and math.isfinite(value) and value >= 0 and (not ratio or value <= 1)


def check_source(source: Source) -> None:
    assert type(source) is Source
    assert all(clean(part) for part in (source.namespace, source.pod, source.container, source.host))
    assert source.labels is None or all(clean(k) and clean(v) for k, v in source.labels.items())


def check(outcome: object) -> None:
    kind = type(outcome)
    assert kind in (RequestEvent, LogEvent, EngineStats, PromptChange, Unrecognised), outcome
    check_source(outcome.source)
    if kind is RequestEvent:
        assert outcome.status in STATUSES
        assert outcome.method in METHODS | {"OTHER", ""}
        assert all(clean(s) for s in (outcome.path, outcome.model, outcome.request_id, outcome.error_type))
        assert finite(outcome.input_tokens, integer=True) and finite(outcome.output_tokens, integer=True)
        for seconds in (outcome.total_s, outcome.queue_s, outcome.inference_s, outcome.ttft_s, outcome.tpot_s):
            assert finite(seconds)
        assert finite(outcome.gpu_memory_bytes) and finite(outcome.timestamp)
        assert outcome.http_status is None or (type(outcome.http_status) is int and 100 <= outcome.http_status <= 599)
    elif kind is LogEvent:
        assert outcome.level in LEVELS
    elif kind is EngineStats:
        for value in outcome[:5]:
            assert finite(value)
        for value in outcome[5:8]:
            assert finite(value, ratio=True)
        assert clean(outcome.model)
    elif kind is PromptChange:
        assert 8 <= len(outcome.prompt_hash) <= 16 and set(outcome.prompt_hash) <= set("0123456789abcdef")
        assert clean(outcome.model)
    else:
        assert outcome.reason in UNRECOGNISED_REASONS and outcome.reason != "internal_error"


@FUZZ
@given(records, st.one_of(st.text(max_size=40), st.sampled_from(["kube.var.log.containers.p_n_c.log", ""])))
def test_any_record_gives_one_well_formed_outcome(record, tag):
    before = copy.deepcopy(record)
    outcome = normalise(record, tag)
    check(outcome)
    assert record == before or record != record  # not modified (NaN makes a record unequal to itself)
    assert normalise(record, tag) == outcome or outcome != outcome  # caches do not change results


@FUZZ
@given(wrapped)
def test_wrapped_json_lines(record):
    check(normalise(record, "t"))


@FUZZ
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS), values, max_size=16))
def test_records_made_of_known_keys(record):
    check(normalise(record, "t"))


@FUZZ
@given(st.dictionaries(wire_keys, wire_values, max_size=12))
def test_records_off_the_wire_with_invalid_utf8(record):
    """Bytes packed as msgpack str (raw) arrive as strings with lone surrogates, as from a real client."""
    payload = msgpack.packb(record, use_bin_type=False, unicode_errors="surrogateescape")
    check(normalise(decode(payload), "t"))


@FUZZ
@given(values, st.one_of(st.none(), st.integers(), st.text()))
def test_anything_that_is_not_a_map(value, tag):
    outcome = normalise(value, tag)
    if isinstance(value, dict):
        check(outcome)
    else:
        assert outcome == Unrecognised("not_a_map", outcome.source)


@FUZZ
@given(records)
def test_all_recognisers_off(record):
    config = NormaliserConfig(parse_vllm_stats=False, parse_tgi=False, parse_levels=False, source_from_tag=False,
                              max_label_length=16)
    outcome = Normaliser(config)(record, "kube.var.log.containers.p_n_c.log")
    assert type(outcome) is not EngineStats
    if type(outcome) is LogEvent:
        assert outcome.level == "unknown"
    if type(outcome) is RequestEvent:
        assert all(len(s) <= 16 for s in (outcome.path, outcome.model, outcome.request_id))
