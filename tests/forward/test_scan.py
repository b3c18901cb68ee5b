"""The C payload scanner reads what msgspec's lean record reads, and refuses the rest.

:class:`~qwen_fluent.forward.scan.PackedScanner` must never take a payload the
typed path would read differently: for any payload it accepts, every column
is checked here against the records as ``LeanRequestRecord`` decodes them
(the measurements as float64, label groups, stamps, request ids, entry
times, record bounds); any payload with a record the lean decoder refuses
must be refused too; and no byte string, however broken, may crash it.
``tests/metrics/test_fast_path.py`` then checks the metrics end to end
against the reference.
"""

from __future__ import annotations

import math
import os
import struct
from datetime import datetime
from typing import Any

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_fluent.forward import entry_seconds, split_packed
from qwen_fluent.forward.scan import DISABLE_ENV, PackedScanner
from qwen_fluent.records.values import iso_seconds
from qwen_fluent.records.typed import (
    COLUMNS,
    LABEL_FIELDS,
    MAX_TYPED_CHARS,
    MAX_TYPED_KUBERNETES,
    MEASUREMENTS,
    LeanRequestRecord,
    scalar,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCANNER = PackedScanner(COLUMNS, MAX_TYPED_CHARS, MAX_TYPED_KUBERNETES)
LEAN = msgspec.msgpack.Decoder(LeanRequestRecord)
MOST = 10_000


def test_the_scanner_is_built() -> None:
    """``pip install`` builds the extension where a C compiler is present (CI has one); without it the
    receiver is correct but several times slower, which this test makes visible rather than silent."""
    if os.environ.get(DISABLE_ENV):
        assert not SCANNER.available  # turned off on purpose: the typed path reads every payload
        return
    assert SCANNER.available, "qwen_fluent.forward._scan is not built: install with a C compiler present"


def event_time(seconds: int, nanoseconds: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanoseconds))


def payload_of(records: list[Any], times: list[Any] | None = None) -> bytes:
    times = times or [event_time(1_700_000_000 + i, 1000 * i) for i in range(len(records))]
    return b"".join(msgpack.packb([t, r], use_bin_type=False) for t, r in zip(times, records))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(width=32),
    st.text(max_size=6), st.sampled_from(["success", "error", "/v1/chat/completions", "2025-04-05T10:23:45Z"]),
    st.binary(max_size=3),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=3), scalars, max_size=2))
lean_keys = st.sampled_from(LeanRequestRecord.__struct_fields__)
records = st.one_of(
    st.dictionaries(lean_keys, scalars, max_size=10),
    st.dictionaries(lean_keys, values, max_size=10),
    st.dictionaries(st.one_of(lean_keys, st.sampled_from(["ttft_ms", "user", "level"])), scalars, max_size=6),
    st.builds(lambda base, pod: {**base, "kubernetes": pod},
              st.dictionaries(lean_keys, scalars, max_size=8),
              st.sampled_from([{"pod_name": "a", "labels": {"app": "x"}}, {"pod_name": "b"}, None, "pod", {}])),
    scalars,
)


def lean(raw: bytes) -> Any:
    try:
        return LEAN.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def check_columns(payload: bytes, batch: list[Any]) -> None:
    """If the scanner takes ``payload``, every column is what the lean decoder reads of its records."""
    cols = SCANNER.scan(payload, len(batch), MOST)
    raws = [msgpack.packb(r, use_bin_type=False) for r in batch]
    decoded = [lean(raw) for raw in raws]
    if cols is None:
        return
    assert None not in decoded, "the scanner took a record the lean decoder refuses"
    n = cols.n
    assert n == len(batch)
    measures = np.frombuffer(cols.measures, np.float64).reshape(n, len(MEASUREMENTS))
    label_codes = np.frombuffer(cols.label_codes, np.int64)
    stamp_codes = np.frombuffer(cols.stamp_codes, np.int64)
    bounds = np.frombuffer(cols.records, np.int64).reshape(n, 2)
    spans = np.frombuffer(cols.spans, np.int64).reshape(n, 2)
    times = np.frombuffer(cols.times, np.float64)
    times_found: list[Any] = []
    assert split_packed(payload, n, MOST, msgspec.Raw, times_found) is not None
    groups: dict[int, Any] = {}
    for i, rec in enumerate(decoded):
        start, end = bounds[i].tolist()
        assert payload[start:end] == raws[i]
        for k, name in enumerate(MEASUREMENTS):
            value = getattr(rec, name)
            assert _same(measures[i, k], math.nan if value is None else float(value))
        # A label code stands for the raw label values and kubernetes bytes: equal within a code, and
        # the first record of each code is where it first appears.
        key = (msgpack.packb([getattr(rec, f) for f in LABEL_FIELDS], default=bytes), bytes(rec.kubernetes))
        groups.setdefault(int(label_codes[i]), key)
        assert groups[int(label_codes[i])] == key
        assert cols.label_firsts[int(label_codes[i])] <= i
        stamp = scalar.decode(cols.stamp_values[int(stamp_codes[i])])
        assert msgpack.packb(stamp) == msgpack.packb(rec.timestamp)
        start, end = spans[i].tolist()
        request_id = scalar.decode(payload[start:end]) if end else None
        assert msgpack.packb(request_id) == msgpack.packb(rec.request_id)
        assert times[i] == entry_seconds(times_found[i])
    assert sorted(groups) == list(range(len(cols.label_keys)))
    assert sorted(set(stamp_codes.tolist())) == list(range(len(cols.stamp_values)))
    for code, first in enumerate(cols.label_firsts):
        assert int(label_codes[first]) == code and code not in label_codes[:first]


@SETTINGS
@given(batch=st.lists(records, min_size=1, max_size=8))
def test_what_the_scanner_takes_it_reads_as_the_lean_record(batch: list[Any]) -> None:
    check_columns(payload_of(batch), batch)


@SETTINGS
@given(batch=st.lists(st.fixed_dictionaries({
    "input_tokens": st.integers(min_value=0, max_value=9000), "total_time_ms": st.floats(0, 1e5),
    "status": st.sampled_from(["success", "error"]), "path": st.sampled_from(["/a", "/b"]),
    "request_id": st.text(max_size=8), "timestamp": st.sampled_from(["2025-04-05T10:23:45Z", 1.5, None]),
    "kubernetes": st.sampled_from([{"pod_name": "a"}, {"pod_name": "b"}]),
}), min_size=1, max_size=20))
def test_request_logs_are_taken_and_grouped(batch: list[Any]) -> None:
    """The common shape is taken (not only checked when it happens to be): grouped by label values and pod."""
    payload = payload_of(batch)
    assert SCANNER.scan(payload, len(batch), MOST) is not None or not SCANNER.available
    check_columns(payload, batch)


def test_equal_values_share_a_code_and_distinct_ones_do_not() -> None:
    if not SCANNER.available:
        pytest.skip(f"{DISABLE_ENV} is set: the scanner is off on purpose")
    pod = {"pod_name": "a", "labels": {"model": "qwen"}}
    batch = [{"status": s, "path": p, "kubernetes": k, "input_tokens": 1}
             for s, p, k in [("ok", "/a", pod), ("ok", "/b", pod), ("ok", "/a", pod), ("ok", "/a", {"pod_name": "b"}),
                             ("ok", "/a", None)]]
    cols = SCANNER.scan(payload_of(batch), 5, MOST)
    assert cols is not None
    assert np.frombuffer(cols.label_codes, np.int64).tolist() == [0, 1, 0, 2, 3]
    assert cols.label_firsts == [0, 1, 3, 4]


REFUSED = {
    "a group marker": payload_of([{"input_tokens": 1}], [msgpack.ExtType(0, struct.pack(">II", 0xFFFFFFFF, 0))]),
    "an int time": payload_of([{"input_tokens": 1}], [1_700_000_000]),
    "a time with metadata": payload_of([{"input_tokens": 1}], [[event_time(1, 0), {}]]),
    "a record that is not a map": payload_of(["text"]),
    "a key twice": b"\x92\xd7\x00" + b"\x00" * 8 + b"\x82\xa6status\xa2ok\xa6status\xa3bad",
    "an unknown key": payload_of([{"input_tokens": 1, "user": "x"}]),
    "a numeric string measurement": payload_of([{"input_tokens": "12"}]),
    "a bool label": payload_of([{"status": True, "input_tokens": 1}]),
    "invalid UTF-8 in the envelope": payload_of([{"input_tokens": 1, "stream": "x"}]).replace(b"\xa1x", b"\xa1\xff"),
    "a surrogate in a path": payload_of([{"input_tokens": 1, "path": "x"}]).replace(b"\xa1x", b"\xa3\xed\xa0\x80"),
    "a string past max_string": payload_of([{"input_tokens": 1, "path": "p" * (MAX_TYPED_CHARS + 1)}]),
    "a kubernetes map past max_keyed": payload_of([{"input_tokens": 1, "kubernetes": {"a": "x" * MAX_TYPED_KUBERNETES}}]),
    "nesting past the depth bound": payload_of([{"input_tokens": 1, "log": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]),
    "a payload cut short": payload_of([{"input_tokens": 1}])[:-1],
}


@pytest.mark.parametrize("payload", REFUSED.values(), ids=REFUSED.keys())
def test_what_the_scanner_refuses(payload: bytes) -> None:
    """Each of these goes the typed or the reference way, which reads (or refuses) it exactly."""
    assert SCANNER.scan(payload, -1, MOST) is None


def test_an_entry_count_other_than_announced_or_past_the_limit_is_refused() -> None:
    payload = payload_of([{"input_tokens": i} for i in range(3)])
    assert (SCANNER.scan(payload, 3, MOST) is not None) == SCANNER.available
    assert SCANNER.scan(payload, 2, MOST) is None
    assert SCANNER.scan(payload, 4, MOST) is None
    assert SCANNER.scan(payload, 3, 2) is None  # more entries than max_entries
    assert SCANNER.scan(b"", -1, MOST) is None


@SETTINGS
@given(data=st.binary(max_size=200))
def test_no_byte_string_crashes_it(data: bytes) -> None:
    cols = SCANNER.scan(data, -1, MOST)
    if cols is not None:  # whatever it takes, the lean decoder takes too, record by record
        bounds = np.frombuffer(cols.records, np.int64).reshape(cols.n, 2)
        for start, end in bounds.tolist():
            LEAN.decode(data[start:end])


@SETTINGS
@given(batch=st.lists(records, min_size=1, max_size=4), cut=st.integers(min_value=0), flips=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=3))
def test_broken_payloads_do_not_crash_it(batch: list[Any], cut: int, flips: list[tuple[int, int]]) -> None:
    """Valid payloads cut short and with bytes overwritten: refused, or read as the lean decoder reads them."""
    data = bytearray(payload_of(batch))
    for at, value in flips:
        data[at % len(data)] = value
    data = bytes(data[: len(data) - cut % (len(data) + 1)])
    cols = SCANNER.scan(data, -1, MOST)
    if cols is not None:
        bounds = np.frombuffer(cols.records, np.int64).reshape(cols.n, 2)
        for start, end in bounds.tolist():
            LEAN.decode(data[start:end])


def test_a_schema_must_be_well_formed() -> None:
    if not SCANNER.available:
        pytest.skip(f"{DISABLE_ENV} is set: the scanner is off on purpose")
    with pytest.raises(ValueError):
        PackedScanner([("a", "measure", 0), ("a", "label", 0)], 10, 10)
    with pytest.raises(ValueError):
        PackedScanner([("a", "stamp", 0), ("b", "stamp", 1)], 10, 10)
    with pytest.raises(KeyError):
        PackedScanner([("a", "nonsense", 0)], 10, 10)


# -- stamps --------------------------------------------------------------------------------


def stamp_seconds(text: str) -> float:
    """What the scanner reads of a record's ``timestamp`` string (NaN: left to Python)."""
    cols = SCANNER.scan(payload_of([{"timestamp": text, "input_tokens": 1}]), 1, MOST)
    assert cols is not None
    return float(np.frombuffer(cols.stamp_seconds, np.float64)[0])


common_stamps = st.builds(
    lambda moment, digits, zone: moment.strftime("%Y-%m-%dT%H:%M:%S")
    + (("." + f"{moment.microsecond:06d}{moment.microsecond % 1000:03d}"[:digits]) if digits else "") + zone,
    # to 2255: later, microseconds since the epoch pass 2^53 and the scanner leaves them to Python
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2255, 1, 1)),
    st.integers(min_value=0, max_value=9),
    st.sampled_from(["", "Z", "+00:00"]),
)


@SETTINGS
@given(text=common_stamps)
def test_the_common_stamp_forms_are_read_as_iso_seconds_reads_them(text: str) -> None:
    """Every stamp of the commonest forms is read in C, to the bit what the reference makes of it."""
    if not SCANNER.available:
        pytest.skip(f"{DISABLE_ENV} is set: the scanner is off on purpose")
    assert stamp_seconds(text) == iso_seconds(text)


@SETTINGS
@given(text=st.one_of(
    common_stamps.map(lambda t: t.replace("T", " ")),
    st.builds(lambda t, at, c: t[:at] + c + t[at + 1:], common_stamps, st.integers(0, 34),
              st.sampled_from(list("0123456789:-.TZz+ x"))),
    st.text(alphabet="0123456789-:T.Z+ ", max_size=36),
    st.sampled_from(["1969-12-31T23:59:59Z", "2025-02-29T00:00:00Z", "2025-04-05T24:00:00Z",
                     "2025-04-05T10:23:60Z", "2025-04-05T10:23:45.Z", "2025-04-05T10:23:45.1234567890Z",
                     "2025-13-01T00:00:00Z", "2025-04-31T00:00:00Z", "2024-02-29T12:00:00+00:00",
                     "3112-01-01T00:00:00.0677", "9999-12-31T23:59:59.999999Z"]),
))
def test_any_other_stamp_is_left_to_python_or_read_the_same(text: str) -> None:
    """Whatever the scanner reads of any string, the reference reads the same; the rest it leaves (NaN)."""
    seconds = stamp_seconds(text)
    if not math.isnan(seconds):
        assert seconds == iso_seconds(text)
