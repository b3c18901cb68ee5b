"""The dedup sink in front of the real metrics sink, fed by the real Forward core.

The Forward core does not yet say which connection a message came on; the
contract it will meet is an attribute ``connection`` on the message (an id
unique within the process). ``OnConnection`` gives decoded messages that
attribute, to hold the sink to the rule of docs/reliability.md: the same
digest on the same connection is a new message, on another a retry.
"""

from __future__ import annotations

from typing import Any

from qwen_fluent.forward import ForwardConnection, Message
from qwen_fluent.metrics import LLMMetrics, MetricsConfig
from qwen_fluent.pipeline import MetricsSink
from qwen_fluent.records import Normaliser
from qwen_fluent.reliability import DedupSink, DuplicateWindow, ReliabilityStats
from qwen_fluent.stats import ReceiverStats
from tests.support.forward import forward_message

RECORDS = [(1_750_000_000.0, {"request_id": f"r{i}", "status": "success", "total_time_ms": 10}) for i in range(4)]


def on_connection(message: Message, connection: int) -> Message:
    cls = type(f"OnConnection{connection}", (Message,), {"__slots__": (), "connection": connection})
    return cls(*message)


class Pipeline:
    def __init__(self) -> None:
        self.stats = ReceiverStats()
        self.metrics = LLMMetrics(MetricsConfig())
        self.reliability = ReliabilityStats()
        self.window = DuplicateWindow(1000, 600.0)
        self.clock = 1000.0
        self.sink = DedupSink(MetricsSink(Normaliser(), self.metrics, self.stats), self.window, self.reliability,
                              clock=lambda: self.clock)

    def feed(self, wire: bytes, connection: int | None = None) -> None:
        conn = ForwardConnection(defer_packed=True)
        conn.receive_data(wire)
        message: Any = conn.next_event()
        assert isinstance(message, Message)
        self.sink(message if connection is None else on_connection(message, connection))


def test_a_retry_on_another_connection_is_counted_once_a_repeat_on_the_same_one_twice() -> None:
    p = Pipeline()
    wire = forward_message("llm", RECORDS, "c1", packed=True)
    p.feed(wire, connection=1)
    p.feed(wire, connection=1)  # the same connection again: two identical messages, both counted
    assert p.stats.records["accepted"] == 8
    p.feed(wire, connection=2)  # another connection: the client's retry
    assert p.stats.records["accepted"] == 8
    assert p.reliability.duplicate_messages["window"] == 1 and p.reliability.duplicate_records["window"] == 4


def test_without_connections_every_repeat_within_the_window_is_a_duplicate_and_the_window_ends() -> None:
    p = Pipeline()
    wire = forward_message("llm", RECORDS, "c1")
    p.feed(wire)
    p.feed(wire)
    assert p.stats.records["accepted"] == 4 and p.reliability.duplicate_messages["window"] == 1
    p.clock += 601  # past dedup_window: a resend this late is counted again
    p.feed(wire)
    assert p.stats.records["accepted"] == 8


def test_messages_without_an_ack_request_are_never_held_back() -> None:
    p = Pipeline()
    wire = forward_message("llm", RECORDS, None)
    p.feed(wire)
    p.feed(wire)
    assert p.stats.records["accepted"] == 8 and len(p.window) == 0


def test_a_restarted_receiver_never_mistakes_an_old_connection_number_for_its_own() -> None:
    """Connection numbers restart with the process; the window keys them with a number drawn at start."""
    first, second = Pipeline(), Pipeline()
    wire = forward_message("llm", RECORDS, "c1", packed=True)
    first.feed(wire, connection=1)
    second.window.load([(d, s.at, s.origin) for d, s in first.window.items()], now=1000.0)
    second.feed(wire, connection=1)  # "connection 1" of the new process is another connection
    assert second.stats.records["accepted"] == 0 and second.reliability.duplicate_messages["window"] == 1
