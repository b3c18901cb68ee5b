"""ReceiverCollector: every ReceiverStats counter becomes its qwen_fluent_* family."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from qwen_fluent import __version__
from qwen_fluent.forward.events import Mode
from qwen_fluent.metrics import ReceiverCollector
from qwen_fluent.stats import ReceiverStats
from tests.support.truth import key, parse_text


def scrape(stats: ReceiverStats) -> dict:
    registry = CollectorRegistry()
    registry.register(ReceiverCollector(stats))
    return parse_text(generate_latest(registry))


def test_known_label_sets_start_at_zero() -> None:
    samples = scrape(ReceiverStats())
    assert {dict(k[1])["outcome"] for k in samples if k[0] == "qwen_fluent_records_total"} == {
        "accepted", "unrecognised", "invalid", "skipped_signal"}
    assert {dict(k[1])["mode"] for k in samples if k[0] == "qwen_fluent_messages_total"} == {m.value for m in Mode}
    assert {dict(k[1])["transport"] for k in samples if k[0] == "qwen_fluent_connections_total"} == {
        "tcp", "tls", "unix"}
    assert all(v == 0 for k, v in samples.items() if k[0] != "qwen_fluent_build_info")
    assert samples[key("qwen_fluent_build_info", {"version": __version__})] == 1


def test_every_counter_is_exposed_with_its_value() -> None:
    stats = ReceiverStats()
    stats.connections_opened["tcp"] += 3
    stats.connections_active = 2
    stats.connections_refused = 1
    stats.bytes_received = 12345
    stats.messages[Mode.FORWARD] += 4  # the server may count by the enum or by its value
    stats.messages["packed_forward"] += 1
    stats.records["accepted"] += 10
    stats.records["invalid"] += 2
    stats.errors["malformed_message"] += 1
    stats.acks = 5
    stats.auth_failures["shared_key_mismatch"] += 1
    stats.heartbeats = 7
    samples = scrape(stats)
    expected = {
        key("qwen_fluent_connections_total", {"transport": "tcp"}): 3,
        key("qwen_fluent_connections_active", {}): 2,
        key("qwen_fluent_connections_refused_total", {}): 1,
        key("qwen_fluent_received_bytes_total", {}): 12345,
        key("qwen_fluent_messages_total", {"mode": "forward"}): 4,
        key("qwen_fluent_messages_total", {"mode": "packed_forward"}): 1,
        key("qwen_fluent_records_total", {"outcome": "accepted"}): 10,
        key("qwen_fluent_records_total", {"outcome": "invalid"}): 2,
        key("qwen_fluent_errors_total", {"reason": "malformed_message"}): 1,
        key("qwen_fluent_acks_total", {}): 5,
        key("qwen_fluent_auth_failures_total", {"reason": "shared_key_mismatch"}): 1,
        key("qwen_fluent_heartbeats_total", {}): 7,
    }
    for k, v in expected.items():
        assert samples[k] == v, k
    assert sum(1 for k in samples if k[0] == "qwen_fluent_messages_total") == len(Mode)
