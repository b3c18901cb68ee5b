"""The typed request decoder agrees with the general normaliser on every record it takes.

For any record msgpack can carry (the fuzz strategies of ``test_fuzz.py``:
keys the normaliser looks for, values of every type, nested maps, lone
surrogates), packed as the wire carries it: where
:func:`~qwen_fluent.records.typed.decode_request` accepts the bytes and
:func:`~qwen_fluent.records.typed.request_event` makes an event, that event
is exactly the normaliser's outcome for the same record. Where either gives
up, the caller falls back to the normaliser, so nothing else needs to agree.
A second property checks that canonical request logs, the common case, are
taken (the fast path is not vacuous).
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from qwen_fluent.records import Normaliser, RequestEvent
from qwen_fluent.records.typed import decode_request, request_event

from .test_fuzz import FUZZ, int64, records, wire_keys, wire_values
from .wire import decode

CANONICAL = ("input_tokens", "output_tokens", "total_time_ms", "queue_time_ms", "inference_time_ms", "gpu_memory_mb")
pods = st.sampled_from([None, {"namespace_name": "ml", "pod_name": "p-1", "container_name": "vllm", "host": "n",
                               "labels": {"model": "qwen"}}, {"pod_name": 3}, "x"])


def typed_outcome(normaliser: Normaliser, wire: bytes, tag: str) -> Any:
    rec = decode_request(wire)
    if rec is None:
        return None
    raw = bytes(rec.kubernetes)
    source, label_model = normaliser.source(decode(raw) if raw else None, tag)
    return request_event(rec, source, label_model, normaliser)


@FUZZ
@given(record=st.one_of(records, st.dictionaries(wire_keys, wire_values, max_size=12)),
       tag=st.sampled_from(["", "kube.var.log.containers.p-2_ml_c-" + "0" * 64 + ".log"]))
def test_where_the_typed_path_decides_it_decides_as_the_normaliser(record: dict[Any, Any], tag: str) -> None:
    try:
        wire = msgpack.packb(record, use_bin_type=True, unicode_errors="surrogateescape")
    except (OverflowError, ValueError, TypeError):
        return  # not something msgpack can carry (an int beyond 64 bits, a float key ...)
    normaliser = Normaliser()
    event = typed_outcome(normaliser, wire, tag)
    if event is not None:
        assert event == Normaliser()(decode(wire), tag)


numbers = st.one_of(st.none(), int64, st.floats())  # a numeric string goes the general way, by design


@FUZZ
@given(values=st.fixed_dictionaries({k: numbers for k in CANONICAL}),
       extra=st.fixed_dictionaries({"request_id": st.text(max_size=8), "status": st.sampled_from(["ok", "error", 500]),
                                    "path": st.text(max_size=12), "kubernetes": pods, "log": st.text(max_size=8)}))
def test_canonical_request_logs_take_the_typed_path(values: dict[str, Any], extra: dict[str, Any]) -> None:
    record = {**values, **extra}
    wire = msgpack.packb(record, use_bin_type=True)
    reference = Normaliser()(decode(wire), "")
    event = typed_outcome(Normaliser(), wire, "")
    if type(reference) is RequestEvent and any(type(v) in (int, float) and v == v and v >= 0 and v < 1e6
                                               for v in values.values()):
        assert event == reference
    if event is not None:
        assert event == reference
