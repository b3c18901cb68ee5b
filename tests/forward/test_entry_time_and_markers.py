"""Two protocol corners on both decode paths: the entry's own time, and Fluent Bit's group markers.

- A request record without a usable ``timestamp`` counts at its entry's time
  (exemplars, ``last_request_timestamp_seconds``), on the general path (the
  connection decodes every entry) and on the typed fast path (the sink splits
  the deferred payload), with the same result for any times.
- Entries whose EventTime seconds are -1 or -2 as int32 (0xFFFFFFFF,
  0xFFFFFFFE: Fluent Bit's group start and end) are skipped and counted as
  ``group_marker``, never taken as records, on both paths.

The equality check is the one of ``tests/metrics/test_fast_path.py``: two
receivers, one per path, see the same bytes; their expositions (text and
OpenMetrics, exemplars included) and record counts must be equal.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from qwen_fluent import pipeline
from qwen_fluent.forward import NEED_DATA, ForwardConnection, Message, Mode
from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser
from qwen_fluent.stats import ReceiverStats
from tests.metrics.test_fast_path import configs, records, request_records

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_750_000_000.0
START, END = 0xFFFFFFFF, 0xFFFFFFFE


def et(sec: int, nsec: int = 0) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


#: Entry times of every form a Fluent Bit or Fluentd sends, plausible or not.
times = st.one_of(
    st.integers(min_value=0, max_value=2**40),
    st.floats(min_value=0, max_value=2e9),
    st.builds(et, st.integers(min_value=0, max_value=2**32 - 3), st.integers(min_value=0, max_value=10**9 - 1)),
    st.builds(lambda sec, meta: [et(sec), meta], st.integers(min_value=1_600_000_000, max_value=1_800_000_000),
              st.just({"trace_id": "t"})),
)
markers = st.builds(lambda sec, attrs: [[et(sec), {"schema": 1}], attrs], st.sampled_from([START, END]),
                    st.just({"resource": {"service.name": "vllm"}}))


class Receiver:
    """One path: the general one (the connection decodes every entry) or the typed fast one."""

    def __init__(self, config: MetricsConfig, fast: bool) -> None:
        self.stats = ReceiverStats()
        self.metrics = LLMMetrics(config)
        self.sink = MetricsSink(Normaliser(), self.metrics, self.stats, fast=fast)
        self.fast = fast

    def feed(self, data: bytes) -> None:
        conn = ForwardConnection(defer_packed=self.fast)
        conn.receive_data(data)
        while (event := conn.next_event()) is not NEED_DATA:
            if not isinstance(event, Message):
                break
            self.sink(event)
            # what the server counts for a message the connection decoded
            self.stats.records["invalid"] += sum(event.invalid.values())
            self.stats.records["group_marker"] += event.group_markers

    def exposition(self) -> tuple[bytes, bytes, dict[str, int]]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.metrics)
        counts = {k: v for k, v in self.stats.records.items() if v}
        return generate_latest(registry), generate_openmetrics(registry), counts


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receive time is the same in both runs, and differs from every entry time drawn."""
    monkeypatch.setattr(pipeline.time, "time", lambda: NOW)


def packed(entries: list[Any], n: int) -> bytes:
    payload = b"".join(msgpack.packb(e, use_bin_type=True) for e in entries)
    return msgpack.packb(["kube.var.log.containers.vllm-0_ml_vllm.log", payload, {"chunk": f"c{n}"}],
                         use_bin_type=True)


@SETTINGS
@given(config=configs, messages=st.lists(
    st.lists(st.one_of(st.tuples(times, records).map(list), markers), max_size=10), min_size=1, max_size=5))
def test_entry_times_and_markers_give_the_same_metrics_on_both_paths(config: MetricsConfig,
                                                                     messages: list[list[Any]]) -> None:
    ref, fast = Receiver(config, fast=False), Receiver(config, fast=True)
    for n, entries in enumerate(messages):
        data = packed(entries, n) * 2  # twice: the second time every label set is known, the columns run
        ref.feed(data)
        fast.feed(data)
    assert fast.exposition() == ref.exposition()
    expected_markers = 2 * sum(1 for entries in messages for e in entries
                               if type(e[0]) is list and e[0][0] in (et(START), et(END)))
    assert ref.stats.records["group_marker"] == expected_markers


@SETTINGS
@given(record=request_records(), t=st.integers(min_value=1_600_000_000, max_value=1_700_000_000))
def test_a_request_without_a_timestamp_counts_at_its_entry_time(record: dict[str, Any], t: int) -> None:
    record = {k: v for k, v in record.items() if k != "timestamp"}
    record.update(request_id="req-x", total_time_ms=125, status="success")
    data = packed([[et(t, 500_000_000), record]], 0)
    for fast in (False, True):
        receiver = Receiver(MetricsConfig(exemplars=True), fast)
        receiver.feed(data)
        text, openmetrics, _ = receiver.exposition()
        last = [line for line in text.decode().splitlines() if line.startswith("qwen_last_request_timestamp_seconds")]
        assert last and all(float(line.rsplit(" ", 1)[1]) == pytest.approx(t + 0.5) for line in last)
        assert f" {t + 0.5}".encode() in openmetrics or f" {t + 0.5:.1f}".encode() in openmetrics  # exemplar stamp


@pytest.mark.parametrize("form", ["forward", "packed", "compressed", "message"])
def test_group_markers_are_skipped_and_counted(form: str) -> None:
    """Fluent Bit's group start, two records, group end: two records, two markers, one ack."""
    record = {"request_id": "r1", "total_time_ms": 10, "status": "success"}
    entries = [[[et(START), {}], {"resource": {}}], [et(1_700_000_000), record], [1_700_000_001, record],
               [[et(END), {}], {}]]
    if form == "forward":
        data = msgpack.packb(["t", entries, {"chunk": "c"}])
    elif form == "message":
        data = msgpack.packb(["t", [et(START), {}], {"resource": {}}, {"chunk": "c"}])
    else:
        import gzip

        payload = b"".join(msgpack.packb(e) for e in entries)
        options = {"chunk": "c"}
        if form == "compressed":
            payload, options["compressed"] = gzip.compress(payload), "gzip"
        data = msgpack.packb(["t", payload, options])
    for fast in (False, True):
        receiver = Receiver(MetricsConfig(), fast)
        receiver.feed(data)
        want = {"group_marker": 1} if form == "message" else {"accepted": 2, "group_marker": 2}
        assert receiver.exposition()[2] == want, (form, fast)


def test_a_marker_is_an_eventtime_only() -> None:
    """The plain integer 4294967295 is a (far) time, not a marker: only EventTime seconds mark groups."""
    conn = ForwardConnection()
    conn.receive_data(msgpack.packb(["t", [[2**32 - 1, {"a": 1}]]]))
    (message,) = [conn.next_event()]
    assert message.mode is Mode.FORWARD and len(message.entries) == 1 and message.group_markers == 0
