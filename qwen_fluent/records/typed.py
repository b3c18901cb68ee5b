"""The typed fast path for request logs: msgpack bytes straight into a :class:`RequestRecord`.

The general :class:`~qwen_fluent.records.normaliser.Normaliser` takes a
record as a dict that msgpack built with every key and value of the record
(and the ``kubernetes`` map, and its labels). For the common record, a
structured request log line, most of that is thrown away. Here msgspec
decodes the record's bytes into a ``Struct`` that holds only the fields the
request families use, ignores every other key without building it, and
keeps the ``kubernetes`` map as raw bytes (identical for every record of a
pod, so it is resolved once per pod, not once per record).

**The general normaliser stays the reference.** A record is taken by this
path only when the result is provably the one the normaliser would give;
everything else *falls back*: :func:`decode_request` returns ``None`` and the
caller decodes the record generically and normalises it. The field types are
the contract:

- every field the normaliser's canonical branch reads is typed
  ``str | int | float | None`` (the measurements ``int | float | None``):
  exactly the values msgpack would give it, so the same conversion functions
  (:mod:`.values`, :mod:`.status`) apply unchanged. A bool, bytes, map,
  array, ext, a string that is not valid UTF-8, or a numeric string in a
  measurement fails validation: fallback.
- every *other* spelling the normaliser knows (``ttft_ms``,
  ``prompt_tokens``, ``total_time_s``, ...) is typed ``None``: present with a
  value, the record fails validation and falls back, since the normaliser's
  general branch would read it; present as nil it changes nothing (the
  general branch skips nil values, so both branches agree).
- a record that yields no request (no usable measurement and not a failed
  request with an id) falls back, because the normaliser would then try the
  TGI, prompt, log-line and level readings.

``tests/records/test_typed.py`` checks with hypothesis that for any record the
two paths give the same :class:`RequestEvent`, and
``tests/metrics/test_fast_path.py`` that they give the same metrics.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import msgspec

from .events import RequestEvent, Source
from .normaliser import _CANONICAL, _MAX_MS, _MS, MEASUREMENT_KEYS, Normaliser, _path
from .status import fold_status, method
from .values import MAX_TOKENS, MIB, gpu_bytes, label, seconds, tokens

#: What a plain scalar of a request record decodes to; anything else falls back.
Scalar = Union[str, int, float, None]

#: The spellings the general branch reads and the canonical one does not.
OTHER_SPELLINGS = tuple(sorted(MEASUREMENT_KEYS - _CANONICAL))


#: The canonical measurements, in this order (the fast path reads them as one row each).
MEASUREMENTS = ("input_tokens", "output_tokens", "total_time_ms", "queue_time_ms", "inference_time_ms",
                "gpu_memory_mb")


def _struct_fields() -> list[tuple[str, Any, Any]]:
    fields: list[tuple[str, Any, Any]] = [
        (name, Optional[Scalar], None)
        for name in (
            "request_id", "method", "path", "model", "status", "error", "error_type",
            "http_status", "status_code", "http_status_code", "timestamp",
        )
    ]
    # Measurements are numbers (a numeric string is read by the normaliser, on the general path).
    fields += [(name, Optional[Union[int, float]], None) for name in MEASUREMENTS]
    fields += [(name, None, None) for name in OTHER_SPELLINGS]
    # The kubernetes filter's map, kept as its msgpack bytes (empty when absent).
    fields.append(("kubernetes", msgspec.Raw, msgspec.Raw()))
    return fields


#: A request record as the fast path reads it. Built from a table so that the
#: other spellings stay in step with the normaliser's own lists. ``gc=False``:
#: it holds only scalars and bytes, never a cycle.
RequestRecord = msgspec.defstruct("RequestRecord", _struct_fields(), gc=False)

_decoder = msgspec.msgpack.Decoder(RequestRecord)
_FALLBACK = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def decode_request(raw: Any) -> Any:
    """The :data:`RequestRecord` in ``raw`` (msgpack bytes of one record), or ``None`` to fall back."""
    try:
        return _decoder.decode(raw)
    except _FALLBACK:
        return None


def decode_requests(raws: list[Any]) -> list[Any]:
    """:func:`decode_request` of each; one C-level pass when every record decodes, the common case."""
    try:
        return list(map(_decoder.decode, raws))
    except _FALLBACK:
        return [decode_request(raw) for raw in raws]


def _ms(value: Any) -> float | None:
    t = type(value)
    if (t is int or t is float) and 0 <= value <= _MAX_MS:
        return value / 1000.0
    return seconds(value, _MS) if value is not None else None


def _tokens(value: Any) -> int | None:
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    return tokens(value) if value is not None else None


def request_event(rec: Any, source: Source, label_model: str, normaliser: Normaliser) -> RequestEvent | None:
    """The event the normaliser makes of ``rec``, or ``None`` where it would look further (fall back).

    Mirrors the canonical branch of ``Normaliser._request`` line for line;
    ``source`` and ``label_model`` are what the normaliser resolves from the
    record's kubernetes map or the tag (:meth:`Normaliser.source`).
    """
    input_tokens = _tokens(rec.input_tokens)
    output_tokens = _tokens(rec.output_tokens)
    total = _ms(rec.total_time_ms)
    queue = _ms(rec.queue_time_ms)
    inference = _ms(rec.inference_time_ms)
    value = rec.gpu_memory_mb
    memory = gpu_bytes(value, MIB) if value is not None else None

    error = rec.error
    error_type_value = rec.error_type
    http_status = rec.http_status
    if http_status is None:
        http_status = rec.status_code
        if http_status is None:
            http_status = rec.http_status_code
    status, code = fold_status(rec.status, http_status, bool(error) or bool(error_type_value))
    limit = normaliser.config.max_label_length
    request_id = label(rec.request_id, limit)
    if (
        input_tokens is None and output_tokens is None and total is None and queue is None
        and inference is None and memory is None
        and not (request_id and (status != "unknown" or code is not None))
    ):
        return None
    tpot = None
    if output_tokens is not None and inference is not None and output_tokens > 0:
        tpot = inference / output_tokens  # ttft is never set on this path
    error_type = label(error_type_value, limit) if type(error_type_value) is str else ""
    model = label(rec.model, limit) or label_model
    return RequestEvent(
        status,
        _path(rec.path, limit),
        model,
        request_id,
        method(rec.method),
        input_tokens,
        output_tokens,
        total,
        queue,
        inference,
        None,
        tpot,
        memory,
        code,
        error_type,
        normaliser.timestamp(rec.timestamp),
        source,
    )
