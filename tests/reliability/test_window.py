"""The duplicate window (sans-IO): both bounds, origins, restore; and what one digest costs in memory."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from qwen_fluent.reliability import DuplicateWindow


def digest(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_a_digest_seen_on_another_connection_is_a_duplicate_until_it_ages_out() -> None:
    w = DuplicateWindow(max_messages=10, max_age=60.0)
    w.add(digest(1), now=1000.0, origin="conn-a")
    assert w.is_duplicate(digest(1), 1030.0, origin="conn-b")
    assert w.is_duplicate(digest(1), 1060.0, origin="conn-b")  # exactly max_age: still inside
    assert not w.is_duplicate(digest(1), 1060.5, origin="conn-b")  # older than max_age: forgotten
    assert len(w) == 0 and w.evicted == {"count": 0, "age": 1}


def test_the_same_connection_repeating_a_message_is_not_a_retry() -> None:
    w = DuplicateWindow(max_messages=10, max_age=60.0)
    w.add(digest(1), 1000.0, origin="conn-a")
    assert not w.is_duplicate(digest(1), 1001.0, origin="conn-a")
    # An unknown origin on either side cannot be told apart: taken for a duplicate.
    assert w.is_duplicate(digest(1), 1001.0, origin=None)
    w.add(digest(2), 1000.0, origin=None)
    assert w.is_duplicate(digest(2), 1001.0, origin="conn-a")


def test_the_count_bound_drops_the_oldest_first() -> None:
    w = DuplicateWindow(max_messages=3, max_age=3600.0)
    for i in range(5):
        w.add(digest(i), 1000.0 + i, origin="a")
    assert len(w) == 3 and w.evicted["count"] == 2
    assert not w.is_duplicate(digest(0), 1010.0, origin="b")
    assert not w.is_duplicate(digest(1), 1010.0, origin="b")
    assert all(w.is_duplicate(digest(i), 1010.0, origin="b") for i in (2, 3, 4))


def test_re_adding_a_digest_makes_it_the_newest() -> None:
    w = DuplicateWindow(max_messages=2, max_age=3600.0)
    w.add(digest(1), 1.0, "a")
    w.add(digest(2), 2.0, "a")
    w.add(digest(1), 3.0, "a")  # a repeat on its own connection
    w.add(digest(3), 4.0, "a")  # evicts 2, the oldest now
    assert [d for d, _ in w.items()] == [digest(1), digest(3)]


def test_adding_expires_old_digests_without_a_lookup() -> None:
    w = DuplicateWindow(max_messages=100, max_age=10.0)
    for i in range(5):
        w.add(digest(i), float(i), "a")
    w.add(digest(99), 13.5, "a")  # cutoff 3.5: 0..3 go
    assert [d for d, _ in w.items()] == [digest(4), digest(99)]
    assert w.evicted["age"] == 4


def test_load_keeps_the_young_digests_within_the_bounds() -> None:
    w = DuplicateWindow(max_messages=2, max_age=10.0)
    kept = w.load([(digest(1), 0.0, None), (digest(2), 95.0, ("boot", 1)), (digest(3), 96.0, None),
                   (digest(4), 97.0, None)], now=100.0)
    assert kept == 2
    assert [d for d, _ in w.items()] == [digest(3), digest(4)]


@pytest.mark.parametrize("bad", [{"max_messages": 0, "max_age": 1.0}, {"max_messages": 1, "max_age": 0.0}])
def test_bounds_must_be_positive(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DuplicateWindow(**bad)  # type: ignore[arg-type]


def test_memory_per_digest_is_what_the_default_bound_assumes() -> None:
    """config.DEDUP_MAX_MESSAGES argues from about 300 bytes per digest (its bytes object included)."""
    n = 20_000
    w = DuplicateWindow(max_messages=n, max_age=3600.0)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        w.add(os.urandom(16), 1000.0 + i * 1e-3, (123456789, i))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per = grown / n
    print(f"duplicate window: {per:.0f} bytes per digest (its bytes, time and origin included)")
    assert 100 < per < 400
