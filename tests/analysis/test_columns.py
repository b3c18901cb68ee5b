"""The request columns: growth by doubling, the row bound and its reservoir sample, exact totals."""

from __future__ import annotations

import random

import numpy as np
import pytest

from qwen_fluent.analysis import Analyzer, summarise
from qwen_fluent.analysis.columns import BYTES_PER_REQUEST, INITIAL_ROWS, STAGE_ROWS, Interner, RequestColumns
from qwen_fluent.records import STATUSES


def fill(columns: RequestColumns, count: int, seed: int = 3) -> dict[str, list]:
    rng = random.Random(seed)
    truth: dict[str, list] = {"total": [], "tokens": [], "status": [], "stamp": []}
    for n in range(count):
        total = rng.uniform(0.01, 30.0) if n % 7 else None
        tokens = rng.randint(0, 5000) if n % 5 else None
        status = STATUSES[n % 4]
        stamp = 1.7e9 + n * 0.01
        columns.add(stamp, status, "/v1/x", f"m{n % 3}", "", total, None, None, None, tokens, 7)
        truth["total"].append(np.nan if total is None else total)
        truth["tokens"].append(-1 if tokens is None else tokens)
        truth["status"].append(n % 4)
        truth["stamp"].append(stamp)
    columns.flush()
    return truth


def test_bytes_per_request_matches_the_dtypes() -> None:
    columns = RequestColumns()
    assert columns.nbytes == INITIAL_ROWS * BYTES_PER_REQUEST == INITIAL_ROWS * 39


def test_growth_keeps_every_row_in_order() -> None:
    count = STAGE_ROWS + INITIAL_ROWS * 3 + 17  # several doublings and two staged blocks
    columns = RequestColumns()
    truth = fill(columns, count)
    assert columns.rows == count and columns.exact
    np.testing.assert_array_equal(columns.column("total_s"), np.array(truth["total"], np.float32))
    np.testing.assert_array_equal(columns.column("input_tokens"), np.array(truth["tokens"], np.int32))
    np.testing.assert_array_equal(columns.column("status"), np.array(truth["status"], np.int8))
    np.testing.assert_array_equal(columns.column("timestamp"), np.array(truth["stamp"]))
    assert columns.nbytes == 131072 * BYTES_PER_REQUEST  # the next power of two above count, no more


def test_past_the_bound_a_uniform_sample_and_exact_totals() -> None:
    count, bound = 100_000, 2_000
    columns = RequestColumns(max_rows=bound, seed=5)
    truth = fill(columns, count)
    assert columns.rows == bound and not columns.exact and columns.totals.requests == count
    assert columns.nbytes == bound * BYTES_PER_REQUEST  # capped at the bound, not the next power of two
    totals = columns.totals
    assert totals.by_status == [truth["status"].count(n) for n in range(len(STATUSES))]
    tokens = np.array(truth["tokens"])
    assert totals.token_sums["input_tokens"] == int(tokens[tokens >= 0].sum())
    assert totals.maxima["total_s"] == float(np.nanmax(np.array(truth["total"], np.float32)))
    assert totals.first == truth["stamp"][0] and totals.last == truth["stamp"][-1]
    # the stored rows are rows that were added, spread over the whole input (not the first 2000)
    stamps = columns.column("timestamp")
    positions = np.round((stamps - 1.7e9) / 0.01).astype(np.int64)
    assert len(set(positions.tolist())) == bound
    assert positions.min() < count * 0.05 and positions.max() > count * 0.95
    # uniform: the mean position of a uniform sample of 2000 is within 5 standard errors of the middle
    assert abs(positions.mean() - count / 2) < 5 * (count / np.sqrt(12)) / np.sqrt(bound)
    np.testing.assert_array_equal(columns.column("total_s"), np.array(truth["total"], np.float32)[positions])


def test_summary_past_the_bound() -> None:
    analyzer = Analyzer(max_rows=100)
    for n in range(1000):
        analyzer.record({"request_id": str(n), "total_time_ms": n + 1, "output_tokens": 2,
                         "timestamp": 1.7e9 + n})
    summary = summarise(analyzer)
    assert summary["percentiles_exact"] is False and summary["stored_requests"] == 100
    assert summary["requests"] == 1000 and summary["by_status"]["unknown"] == 1000
    assert summary["output_tokens"]["sum"] == 2000 and summary["total_time_seconds"]["max"] == 1.0
    assert summary["time_span"]["seconds"] == 999 and summary["qps"] == pytest.approx(1000 / 999)
    assert 0.2 < summary["total_time_seconds"]["p50"] < 0.8  # an estimate of 0.5005


def test_interner_bound() -> None:
    class Small(Interner):
        LIMIT = 4

    interner = Small()
    codes = [interner.code(name) for name in ("a", "b", "c", "d", "e", "a")]
    assert codes == [0, 1, 2, 3, 3, 0]
    assert interner.names == ["a", "b", "c", Interner.OTHER]
