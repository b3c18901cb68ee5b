"""Checkpoints: every aggregate survives capture -> file -> restore exactly, and keeps counting the same.

The records are the fast-path property test's (requests of every shape, vLLM
stats, log levels, prompts, unrecognised and invalid entries, under label
caps and small ``max_series``), fed through the real Forward core and the
metrics sink. A receiver restored from a checkpoint must expose the same bytes
as the one that wrote it, and after both take the same further messages,
still the same bytes: label caps, overflow and row state came back too.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_fluent import pipeline
from qwen_fluent.metrics import MetricsConfig
from qwen_fluent.reliability import (
    Checkpointer,
    DuplicateWindow,
    Parts,
    ReliabilityStats,
    StateCorrupt,
    StateError,
    StateFile,
)
from qwen_fluent.reliability.state import fingerprint
from tests.metrics.test_fast_path import NOW, Receiver, configs, entries, packed

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TAG = "kube.var.log.containers.vllm-0_ml_vllm-" + "a" * 64 + ".log"


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records without a timestamp count at the receive time: the same for both receivers."""
    monkeypatch.setattr(pipeline.time, "time", lambda: NOW)


def parts(receiver: Receiver) -> Parts:
    window = DuplicateWindow(1000, 600.0)
    return Parts(receiver.metrics, receiver.stats, ReliabilityStats(), window)


def round_trip(state: dict[str, Any], directory: str) -> dict[str, Any]:
    file = StateFile(directory)
    file.prepare()
    file.write(state)
    restored = file.read()
    assert restored is not None
    return restored


@SETTINGS
@given(config=configs, before=st.lists(entries, min_size=1, max_size=4), after=st.lists(entries, max_size=3))
def test_a_restored_receiver_exposes_and_counts_exactly_as_the_one_that_wrote_the_checkpoint(
        tmp_path_factory: pytest.TempPathFactory, config: MetricsConfig, before: list[Any], after: list[Any]) -> None:
    first = Receiver(config, fast=True)
    for n, batch in enumerate(before):
        first.feed(packed(TAG, batch, n) * 2)
    state = round_trip(parts(first).capture(NOW), str(tmp_path_factory.mktemp("state")))
    second = Receiver(config, fast=True)
    parts(second).restore(state, NOW)
    assert second.exposition() == first.exposition()
    for n, batch in enumerate(after, start=len(before)):
        first.feed(packed(TAG, batch, n))
        second.feed(packed(TAG, batch, n))
    assert second.exposition() == first.exposition()


def test_the_receiver_counters_and_the_window_come_back(tmp_path: Any) -> None:
    first = Receiver(MetricsConfig(), fast=True)
    first.feed(packed(TAG, [{"request_id": "a", "total_time_ms": 5, "status": "success"}], 0))
    first.stats.errors["idle_timeout"] += 3
    first.stats.connections_active = 7  # a gauge of this process: not carried over
    p = parts(first)
    p.window.add(b"d" * 16, NOW - 10, (1, 2))
    p.reliability.duplicate_messages["window"] += 4
    p.reliability.counters_start = 1_600_000_000.0
    state = round_trip(p.capture(NOW), str(tmp_path))
    second = Receiver(MetricsConfig(), fast=True)
    q = parts(second)
    q.restore(state, NOW)
    assert second.stats.records == first.stats.records and second.stats.errors["idle_timeout"] == 3
    assert second.stats.connections_active == 0
    assert q.window.is_duplicate(b"d" * 16, NOW, ("another", "run"))
    assert q.reliability.duplicate_messages["window"] == 4 and q.reliability.counters_start == 1_600_000_000.0


def test_a_checkpoint_of_another_bucket_layout_restores_the_counters_but_not_the_families(tmp_path: Any) -> None:
    first = Receiver(MetricsConfig(), fast=True)
    first.feed(packed(TAG, [{"request_id": "a", "total_time_ms": 5, "status": "success"}], 0))
    p = parts(first)
    p.reliability.counters_start = 1_600_000_000.0
    state = round_trip(p.capture(NOW), str(tmp_path))
    other = MetricsConfig(duration_buckets=(0.5, 1.0))
    second = Receiver(other, fast=True)
    assert fingerprint(second.metrics) != fingerprint(first.metrics)
    q = parts(second)
    q.restore(state, NOW)
    assert second.exposition() != first.exposition()
    assert second.exposition()[0] == Receiver(other, fast=True).exposition()[0]  # the families start from zero
    assert second.stats.records["accepted"] == 1  # the receiver's own counters are kept
    assert q.reliability.counters_start != 1_600_000_000.0  # and the start time says the families restarted


def test_no_file_is_no_checkpoint_and_a_damaged_one_refuses_to_start(tmp_path: Any) -> None:
    file = StateFile(str(tmp_path))
    assert file.read() is None
    receiver = Receiver(MetricsConfig(), fast=True)
    receiver.feed(packed(TAG, [{"request_id": "a", "total_time_ms": 5}], 0))
    file.write(parts(receiver).capture(NOW))
    with open(file.path, "rb") as f:
        data = f.read()
    for damaged, why in ((data[:-1], "checksum"), (data[:10], "header"), (b"x" * 80, "not a qwen-fluent"),
                         (data[:8] + struct.pack(">H", 99) + data[10:], "version 99"),
                         (data[:-5] + bytes(b ^ 1 for b in data[-5:]), "checksum")):
        with open(file.path, "wb") as f:
            f.write(damaged)
        with pytest.raises(StateCorrupt, match=why) as info:
            file.read()
        assert "Move it away" in str(info.value)


def test_an_unwritable_state_directory_is_named(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot create the state directory"):
        StateFile(str(blocker / "state")).prepare()


def test_the_write_is_atomic_a_crash_before_the_rename_leaves_the_old_checkpoint(tmp_path: Any) -> None:
    """The new state goes to a temporary file first: a leftover one (a crash mid-write) is never read."""
    file = StateFile(str(tmp_path))
    receiver = Receiver(MetricsConfig(), fast=True)
    file.write(parts(receiver).capture(NOW))
    old = file.read()
    with open(f"{file.path}.tmp.12345", "wb") as f:  # what a write interrupted by SIGKILL leaves
        f.write(b"half a checkpoint")
    assert file.read() == old
    assert sorted(os.listdir(tmp_path)) == ["state.qfs", "state.qfs.tmp.12345"]


def test_group_commit_resolves_after_the_checkpoint_that_holds_the_messages(tmp_path: Any) -> None:
    """Messages applied within one commit delay share one checkpoint: one write, every future resolved
    after it; a future asked for during that write waits for the next checkpoint."""
    receiver = Receiver(MetricsConfig(), fast=True)
    stats = ReliabilityStats()
    file = StateFile(str(tmp_path))
    cp = Checkpointer(Parts(receiver.metrics, receiver.stats, stats, None), file, stats, interval=3600,
                      commit_delay=0.05)

    async def main() -> None:
        futures = []
        for n in range(20):
            receiver.feed(packed(TAG, [{"request_id": f"r{n}", "total_time_ms": n}], n))
            futures.append(cp.durable())
        assert not any(f.done() for f in futures)
        await asyncio.gather(*futures)
        assert stats.checkpoints["written"] == 1
        state = file.read()
        assert state is not None and state["receiver"]["records"]["accepted"] == 20
        receiver.feed(packed(TAG, [{"request_id": "late", "total_time_ms": 1}], 99))
        await cp.durable()
        assert stats.checkpoints["written"] == 2
        assert file.read()["receiver"]["records"]["accepted"] == 21  # type: ignore[index]
        await cp.close()
        assert stats.checkpoints["written"] == 3

    asyncio.run(main())


def test_a_failed_write_fails_the_waiting_acks_and_is_counted(tmp_path: Any) -> None:
    receiver = Receiver(MetricsConfig(), fast=True)
    stats = ReliabilityStats()
    directory = tmp_path / "state"
    file = StateFile(str(directory))
    file.prepare()
    cp = Checkpointer(Parts(receiver.metrics, receiver.stats, stats, None), file, stats, interval=3600,
                      commit_delay=0.0)
    directory.rmdir()  # the volume went away

    async def main() -> None:
        with pytest.raises(StateError, match="cannot write the checkpoint"):
            await cp.durable()
        assert stats.checkpoints == {"failed": 1}

    asyncio.run(main())
