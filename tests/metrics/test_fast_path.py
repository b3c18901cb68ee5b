"""The fast path and the reference give the same metrics, sample for sample, for any records.

Two receivers see the same PackedForward messages. The reference decodes
every entry with msgpack in the connection and counts record by record
(``MetricsSink(fast=False)``, ``defer_packed=False``); the fast one defers
the payload, decodes request records into typed structs and counts each
message column by column; a third does the same but reads payloads of lean
request logs with the C scanner (``qwen_fluent.forward.scan``) where it is
built, and the typed decoder only where the scanner refuses. Hypothesis builds the records: canonical request
logs with every kind of value in every field (ints, floats, NaN, infinities,
64-bit and larger integers, numeric strings, booleans, nil), the other
spellings of the same fields, kubernetes maps from a small pool of pods,
failed requests with only an id and a status, vLLM, TGI and plain log lines,
and records that are not maps. Label caps small enough to fold, and an expiry
pass between messages, are drawn too. Both expositions (text and OpenMetrics,
exemplars included) and the receiver's record counts must be equal.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from qwen_fluent import pipeline
from qwen_fluent.forward import NEED_DATA, ForwardConnection, Message
from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.metrics.fast import FastRequests
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser
from qwen_fluent.forward.scan import PackedScanner
from qwen_fluent.records.typed import (
    COLUMNS,
    ENVELOPE,
    MAX_TYPED_CHARS,
    MAX_TYPED_KUBERNETES,
    OTHER_SPELLINGS,
    LeanRequestRecord,
    RequestRecord,
)
from qwen_fluent.stats import ReceiverStats

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_750_000_000.0

PODS = [
    {"namespace_name": "ml", "pod_name": f"vllm-{i}", "container_name": "vllm", "host": "node-1",
     "labels": {"app": "llm", "model": f"qwen-{i % 2}"}}
    for i in range(4)
] + [{"namespace_name": "ml", "pod_name": "odd"}, {"pod_name": 7}, "not-a-map"]

numbers = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=5000),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e6),
    st.sampled_from(["12", "1.5e3", "x", "", "-1"]),
    st.booleans(),
)
words = st.one_of(
    st.none(), st.sampled_from(["success", "error", "ok", "TIMEOUT", "cancelled", "weird", " Failed ", ""]),
    st.integers(min_value=100, max_value=600), st.booleans(), st.text(max_size=6),
)
paths = st.one_of(st.none(), st.sampled_from(["/v1/chat/completions", "/v1/completions?x=1", "", "/a#b"]),
                  st.text(max_size=8), st.integers(min_value=-(2**63), max_value=2**64 - 1))
stamps = st.one_of(st.none(), st.sampled_from(["2025-04-05T10:23:45Z", "2025-04-05T10:23:46.5+00:00", "bogus"]),
                   st.floats(min_value=0, max_value=2e9), st.integers(min_value=0, max_value=2**62))


@st.composite
def request_records(draw: Any) -> dict[Any, Any]:
    record: dict[Any, Any] = {}
    for key in ("input_tokens", "output_tokens", "total_time_ms", "queue_time_ms", "inference_time_ms",
                "gpu_memory_mb"):
        if draw(st.booleans()):
            record[key] = draw(numbers)
    for key, strategy in (("status", words), ("http_status", words), ("status_code", words), ("path", paths),
                          ("model", st.one_of(st.none(), st.sampled_from(["qwen2.5-7b", "", " lora "]))),
                          ("method", st.one_of(st.none(), st.sampled_from(["POST", "get", "BREW", ""]))),
                          ("error", st.one_of(st.none(), st.sampled_from(["", "boom"]), st.booleans(),
                                              st.just({"type": "oom"}))),
                          ("error_type", st.one_of(st.none(), st.sampled_from(["", "oom"]))),
                          ("timestamp", stamps)):
        if draw(st.integers(min_value=0, max_value=2)) == 0:
            record[key] = draw(strategy)
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        record["request_id"] = draw(st.one_of(st.sampled_from(["req-1", "req-2", "  ", ""]), st.text(max_size=5),
                                               st.integers(min_value=-(2**63), max_value=2**64 - 1),
                                               st.binary(max_size=3)))
    else:
        record["request_id"] = f"req-{draw(st.integers(min_value=0, max_value=50))}"
    if draw(st.integers(min_value=0, max_value=6)) == 0:
        record[draw(st.sampled_from(OTHER_SPELLINGS))] = draw(numbers)
    if draw(st.integers(min_value=0, max_value=4)):
        record["kubernetes"] = draw(st.sampled_from(PODS))
    record["log"] = "ignored"
    return record


#: Log lines a server writes beside its request logs: vLLM's stats line, TGI's request line, plain ones.
other_lines = [
    "INFO 04-05 10:23:47 [loggers.py:116] Engine 000: Avg prompt throughput: 1.0 tokens/s, Running: 1 reqs, "
    "GPU KV cache usage: 9.9%, Prefix cache hit rate: 10.0%",
    'INFO generate{total_time="1.2s" inference_time="1s" time_per_token="5ms"}: router: Success',
    "WARNING something slow", "plain text", '{"input_tokens": 12, "total_time_ms": 40}',
]
other_records = st.one_of(
    st.builds(lambda line, pod: {"log": line, "kubernetes": pod}, st.sampled_from(other_lines), st.sampled_from(PODS)),
    st.just({}),
    st.just({"level": "error"}),
    st.just({"system_prompt": "be brief"}),
)
records = st.one_of(request_records(), request_records(), request_records(), other_records)
entries = st.lists(st.one_of(records, records, records, st.just("not a map")), min_size=0, max_size=12)

configs = st.sampled_from([
    MetricsConfig(),
    MetricsConfig(label_limits={"pod": 2, "path": 2}, max_series=6),
    MetricsConfig(labels=("status", "model"), histogram_labels=("model",), max_series=3, exemplars=True),
    MetricsConfig(labels=("path", "pod"), histogram_labels=("path", "pod"), pod_labels={"app": "app"},
                  zero_fill_statuses=False),
    MetricsConfig(family_labels={"request_queue_duration_seconds": ("status", "pod"),
                                 "request_duration_seconds": ("status", "path", "model", "namespace", "pod",
                                                              "container")},
                  label_limits={"pod": 3}, max_series=5),
])


def packed(tag: str, batch: list[Any], n: int) -> bytes:
    payload = b"".join(
        msgpack.packb([msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, i)), record])
        for i, record in enumerate(batch))
    return msgpack.packb([tag, payload, {"chunk": f"c{n}", "size": len(batch)}], use_bin_type=True)


class Receiver:
    def __init__(self, config: MetricsConfig, fast: bool, scan: bool = False) -> None:
        self.stats = ReceiverStats()
        self.metrics = LLMMetrics(config)
        self.sink = MetricsSink(Normaliser(), self.metrics, self.stats, fast=fast, scan=scan)
        self.fast = fast

    def feed(self, data: bytes) -> None:
        conn = ForwardConnection(defer_packed=self.fast)
        conn.receive_data(data)
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, Message):
                self.sink(event)
                self.stats.records["invalid"] += sum(event.invalid.values())
            else:
                break

    def exposition(self) -> tuple[bytes, bytes, dict[str, int]]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.metrics)
        return generate_latest(registry), generate_openmetrics(registry), dict(self.stats.records)


def receivers(config: MetricsConfig) -> tuple[Receiver, list[Receiver]]:
    """The reference, and the fast path twice: typed records only, and scanned columns where the scanner takes
    a payload."""
    return Receiver(config, fast=False), [Receiver(config, fast=True), Receiver(config, fast=True, scan=True)]


def assert_same_metrics(config: MetricsConfig, stream: list[tuple[bytes, bool]]) -> None:
    """Feed each message (and an expiry pass where asked) to the reference and both fast paths; compare."""
    ref, fasts = receivers(config)
    clock = NOW
    for data, expire_after in stream:
        if expire_after:
            clock += 1000
        for receiver in (ref, *fasts):
            receiver.feed(data)
            if expire_after:
                receiver.metrics.expire(clock)
    for fast in fasts:
        assert fast.exposition() == ref.exposition()


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records without a timestamp count at the message's receive time: the same in both runs."""
    monkeypatch.setattr(pipeline.time, "time", lambda: NOW)


@SETTINGS
@given(config=configs, messages=st.lists(st.tuples(entries, st.booleans()), min_size=1, max_size=6))
def test_fast_and_reference_paths_give_the_same_metrics(config: MetricsConfig,
                                                         messages: list[tuple[list[Any], bool]]) -> None:
    # Each message twice: the second time every label set is known, so the columnar pass runs.
    assert_same_metrics(config, [(packed("kube.var.log.containers.vllm-0_ml_vllm-" + "a" * 64 + ".log", batch, n) * 2,
                                  expire_after) for n, (batch, expire_after) in enumerate(messages)])


def _apply_calls(config: MetricsConfig, data: bytes, scan: bool = False) -> tuple[list[bool], Receiver]:
    """What each columnar count of the fast path answered (True: counted by columns), in order."""
    receiver = Receiver(config, fast=True, scan=scan)
    calls: list[bool] = []
    count = FastRequests._count

    def spy(self: FastRequests, *args: Any) -> bool:
        calls.append(count(self, *args))
        return calls[-1]

    FastRequests._count = spy  # type: ignore[method-assign]
    try:
        receiver.feed(data)
    finally:
        FastRequests._count = count  # type: ignore[method-assign]
    return calls, receiver


def scanned(calls: list[bool]) -> list[bool]:
    """``calls`` as the scanning receiver makes them: a message the scanned columns refuse is tried again as
    typed records (which refuse it for the same reason), when the scanner is built."""
    if not PackedScanner(COLUMNS, MAX_TYPED_CHARS, MAX_TYPED_KUBERNETES).available:
        return calls
    return [answer for call in calls for answer in ((call,) if call else (False, False))]


@pytest.mark.parametrize("scan", [False, True], ids=["typed", "scanned"])
@pytest.mark.parametrize("config,calls", [
    # Far from every cap: the 4 new label sets are admitted in record order, the message counted by columns.
    (MetricsConfig(), [True, True, True]),
    # At the pod cap, admission order matters: the first message goes record by record, the rest by columns.
    (MetricsConfig(label_limits={"pod": 4}), [False, True, True]),
], ids=["far-from-caps", "at-the-pod-cap"])
def test_messages_of_request_logs_are_counted_column_by_column(config: MetricsConfig, calls: list[bool],
                                                               scan: bool) -> None:
    batch = [{"input_tokens": i, "total_time_ms": 10 * i, "status": "success", "request_id": f"r{i}",
              "kubernetes": PODS[i % 4]} for i in range(1, 200)]
    data = packed("t", batch, 0) * 3
    seen, receiver = _apply_calls(config, data, scan)
    assert seen == (scanned(calls) if scan else calls)
    assert receiver.stats.records["accepted"] == 3 * len(batch)
    reference = Receiver(config, fast=False)
    reference.feed(data)
    assert receiver.exposition() == reference.exposition()


def test_a_payload_the_typed_frame_refuses_is_decoded_the_general_way() -> None:
    """Odd times (a msgpack Timestamp, a bool) and non-map records: the general decoder counts them invalid."""
    payload = b"".join(msgpack.packb(e, datetime=False) for e in [
        [msgpack.Timestamp(1, 0), {"input_tokens": 1}], [True, {"input_tokens": 2}], [1, "x"], [1, {"total_time_ms": 5}]])
    data = msgpack.packb(["t", payload, {"size": 4}], use_bin_type=True)
    ref, fast = Receiver(MetricsConfig(), fast=False), Receiver(MetricsConfig(), fast=True)
    ref.feed(data)
    fast.feed(data)
    assert fast.exposition() == ref.exposition()
    assert fast.stats.records["invalid"] == 2 and fast.stats.records["accepted"] == 2


@st.composite
def pod_chunks(draw: Any) -> list[dict[Any, Any]]:
    """One container's chunk, as a tail input sends it: every record carries the same kubernetes map (or
    none). The fast path then keys a record by its request fields alone (``FastRequests._distinct``)."""
    pod = draw(st.sampled_from([*PODS, None]))
    batch = draw(st.lists(request_records(), min_size=1, max_size=12))
    for record in batch:
        record.pop("kubernetes", None)
        if pod is not None:
            record["kubernetes"] = pod
    return batch


@SETTINGS
@given(config=configs, messages=st.lists(st.tuples(pod_chunks(), st.booleans()), min_size=1, max_size=6))
def test_one_pods_chunks_give_the_same_metrics(config: MetricsConfig,
                                                messages: list[tuple[list[Any], bool]]) -> None:
    assert_same_metrics(config, [(packed(f"kube.var.log.containers.vllm-{n % 2}_ml_vllm-" + "b" * 64 + ".log", batch,
                                         n) * 2, expire_after) for n, (batch, expire_after) in enumerate(messages)])


@pytest.mark.parametrize("scan", [False, True], ids=["typed", "scanned"])
def test_a_pods_chunk_with_folded_label_sets_is_counted_column_by_column(scan: bool) -> None:
    """A pod's chunk with more paths than the cap: the first message goes record by record (a cap is in
    reach), the next ones by columns, each folded label tuple counting its folds once per record."""
    config = MetricsConfig(label_limits={"path": 2})
    batch = [{"input_tokens": i, "total_time_ms": 10 * i, "status": ("success", "error")[i % 2],
              "path": f"/v1/p{i % 5}", "request_id": f"r{i}", "kubernetes": PODS[0]} for i in range(1, 300)]
    data = packed("t", batch, 0) * 3
    seen, receiver = _apply_calls(config, data, scan)
    assert seen == (scanned([False, True, True]) if scan else [False, True, True])
    reference = Receiver(config, fast=False)
    reference.feed(data)
    assert receiver.metrics._space.overflow["path"] > 0  # the folds were counted, and below, as the reference does
    assert receiver.exposition() == reference.exposition()
    counts = receiver.exposition()[2]
    assert counts["accepted"] == 3 * len(batch)


lean_fields = set(LeanRequestRecord.__struct_fields__)


@SETTINGS
@given(record=st.one_of(request_records(), other_records,
                        st.dictionaries(st.sampled_from([*ENVELOPE, "input_tokens", "status", "user"]), numbers)))
def test_the_lean_record_reads_what_the_full_one_reads(record: dict[Any, Any]) -> None:
    """Where the lean record decodes a record, the full one does too, with the same value in every field
    both have; where it refuses one, the full one refuses it as well or the record has a key it does not
    know (then the pipeline decodes with the full record, so nothing is lost either way)."""
    raw = msgpack.packb(record, use_bin_type=True)
    try:
        lean = msgspec.msgpack.decode(raw, type=LeanRequestRecord)
    except msgspec.ValidationError:
        unknown = set(record) - lean_fields
        if not unknown:
            with pytest.raises(msgspec.ValidationError):
                msgspec.msgpack.decode(raw, type=RequestRecord)
        return
    full = msgspec.msgpack.decode(raw, type=RequestRecord)
    for name in RequestRecord.__struct_fields__:
        if name in lean_fields:
            # msgpack of the value: NaN equals NaN, and a Raw map compares by its bytes.
            lean_value, full_value = getattr(lean, name), getattr(full, name)
            assert msgpack.packb(lean_value, default=bytes) == msgpack.packb(full_value, default=bytes)
        else:
            assert getattr(full, name) is None  # another spelling: the lean record refuses it when present


@pytest.mark.parametrize("times,last", [
    # Fluent Bit's form: every time an EventTime, checked joined and handed out as raw bytes.
    ([msgpack.ExtType(0, struct.pack(">II", 1_700_000_000 + i, 250_000_000 * i)) for i in range(4)],
     "1700000003.75"),
    # Every other form the reference accepts: ints, floats, Fluent Bit's [time, {metadata}] pair, and an
    # EventTime whose seconds start with 0xff without being a group marker: checked time by time.
    ([1_700_000_001, 1_700_000_002.5, [msgpack.ExtType(0, struct.pack(">II", 1_700_000_003, 5)), {"m": 1}],
      msgpack.ExtType(0, struct.pack(">II", 0xFF000000, 0))], "4278190080.0"),
], ids=["event-times", "mixed-forms"])
def test_records_without_a_timestamp_count_at_their_entrys_time(times: list[Any], last: str) -> None:
    """The entry's time reaches the metrics the same way on both paths, whatever its form."""
    payload = b"".join(msgpack.packb([t, {"input_tokens": i + 1, "total_time_ms": 5, "request_id": f"r{i}",
                                          "status": "success"}]) for i, t in enumerate(times))
    data = msgpack.packb(["t", payload, {"chunk": "c", "size": len(times)}], use_bin_type=True)
    config = MetricsConfig(exemplars=True)
    ref, fasts = receivers(config)
    for receiver in (ref, *fasts):
        receiver.feed(data)
    for fast in fasts:
        assert fast.stats.records["accepted"] == len(times)
        assert fast.exposition() == ref.exposition()
        # The bucket's exemplar is the last record's, at its own entry time (not the receive time).
        assert f' # {{request_id="r3"}} 0.005 {last}\n'.encode() in fast.exposition()[1]


def test_the_label_cache_is_bounded_in_bytes_and_counts_stay_the_reference() -> None:
    """Pods with large kubernetes maps (annotations near the typed path's 16 KiB) fill the fast path's
    raw-key cache by bytes long before its count: it is emptied at the bound, and nothing is miscounted."""
    from qwen_fluent.metrics.llm import raw_key_size

    config = MetricsConfig()
    ref, fast = Receiver(config, fast=False), Receiver(config, fast=True, scan=True)
    fast.metrics.max_raw_key_bytes = 64 * 1024
    peak = 0
    for n in range(40):
        pod = {"namespace_name": "ml", "pod_name": f"vllm-{n}", "container_name": "vllm",
               "annotations": {"note": "x" * 12_000}}
        batch = [{"input_tokens": i, "output_tokens": 2, "total_time_ms": 100 + i, "status": "success",
                  "path": "/v1/chat/completions", "kubernetes": pod} for i in range(5)]
        data = packed("kube.var.log.containers.x.log", batch, n)
        ref.feed(data)
        fast.feed(data)
        cache = fast.metrics.raw_keys
        assert fast.metrics.raw_key_bytes == sum(map(raw_key_size, cache))
        peak = max(peak, fast.metrics.raw_key_bytes)
    assert 0 < peak <= 64 * 1024
    assert len(fast.metrics.raw_keys) < 40  # it was emptied on the way: 40 pods of ~12 KiB do not fit
    assert fast.exposition() == ref.exposition()


def test_an_exemplar_carries_its_own_records_time_when_other_records_lack_the_value() -> None:
    """Found by hypothesis: the bucket's exemplar is the only record with a duration, which has no stamp
    and so counts at its entry's time; the record before it (a stamp of its own, no duration) must not
    lend it its time. The exemplar columns are the rows with a value, the times every record's."""
    batch = [{"output_tokens": 0, "timestamp": "2025-04-05T10:23:45Z", "request_id": "req-1"},
             {"total_time_ms": 0, "request_id": "req-0"}]
    config = MetricsConfig(exemplars=True)
    assert_same_metrics(config, [(packed("t", batch, 0) * 2, False)])
    fast = Receiver(config, fast=True, scan=True)
    fast.feed(packed("t", batch, 0))
    assert b' # {request_id="req-0"} 0.0 1700000000.0\n' in fast.exposition()[1]


@pytest.mark.parametrize("scan", [False, True], ids=["typed", "scanned"])
def test_log_lines_among_request_logs_leave_the_requests_to_the_columns(scan: bool) -> None:
    """A server writes warnings between its request lines, and vLLM its stats lines: a chunk of a pod's log
    holds both. Those records are decided by the normaliser; the requests are still counted by columns
    (one refused try, then counted, per message), never record by record, and as the reference counts."""
    pod = PODS[0]
    batch: list[Any] = []
    for i in range(1, 300):
        batch.append({"input_tokens": i, "total_time_ms": 10 * i, "status": ("success", "error")[i % 2],
                      "request_id": f"r{i}", "kubernetes": pod})
        if i % 50 == 0:
            batch.append({"log": "WARNING 12-01 10:00:00 slow request", "stream": "stderr", "kubernetes": pod})
    batch.append({"log": other_lines[0], "kubernetes": pod})  # a vLLM stats line
    batch.append({"level": "error", "message": "CUDA out of memory", "kubernetes": pod})
    config = MetricsConfig(exemplars=True)
    data = packed("t", batch, 0) * 3
    seen, receiver = _apply_calls(config, data, scan)
    assert seen == [False, True] * 3
    reference = Receiver(config, fast=False)
    reference.feed(data)
    assert receiver.exposition() == reference.exposition()
    assert receiver.stats.records["accepted"] == 3 * len(batch)
