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

from typing import Annotated, Any, Optional, Union

import msgspec

from .events import RequestEvent, Source
from .normaliser import _CANONICAL, _MAX_MS, _MS, MEASUREMENT_KEYS, Normaliser, _path
from .status import fold_status, method
from .values import MAX_TOKENS, MIB, gpu_bytes, label, seconds, tokens

#: Longest string a typed record takes, in characters; a record with a longer one
#: falls back (and its labels are cut by the normaliser as always). The fast
#: path caches label sets by the raw strings (``LLMMetrics.raw_keys``), so
#: without this a 4 MiB path or model was kept as a cache key (issue 10).
#: 4096 is the largest ``[records] max_label_length``: a value the normaliser
#: could keep whole is never sent the slow way for its length.
MAX_TYPED_CHARS = 4096

#: Longest ``kubernetes`` map, as msgpack bytes, the fast path takes; a message
#: with a larger one is decoded the general way (the pipeline checks). The raw
#: map is a cache key too; Fluent Bit's kubernetes filter makes maps of a few
#: KiB (labels and annotations), 16 KiB leaves room.
MAX_TYPED_KUBERNETES = 16 * 1024

#: What a plain scalar of a request record decodes to; anything else falls back.
Scalar = Union[Annotated[str, msgspec.Meta(max_length=MAX_TYPED_CHARS)], int, float, None]

#: The spellings the general branch reads and the canonical one does not.
OTHER_SPELLINGS = tuple(sorted(MEASUREMENT_KEYS - _CANONICAL))


#: The canonical measurements, in this order (the fast path reads them as one row each).
MEASUREMENTS = ("input_tokens", "output_tokens", "total_time_ms", "queue_time_ms", "inference_time_ms",
                "gpu_memory_mb")


#: Keys Fluent Bit puts beside a request log's own fields (tail with the cri parser: ``time``,
#: ``stream``, ``_p``, ``logtag``; a kept ``log``; ``date`` from an output's ``time_key``). The
#: canonical branch reads none of them, and :data:`RequestRecord` ignores them as unknown keys;
#: :data:`LeanRequestRecord` accepts them as views it never reads.
ENVELOPE = ("time", "stream", "_p", "logtag", "log", "date")


def _scalar(name: str) -> tuple[str, Any, Any]:
    # Measurements are numbers (a numeric string is read by the normaliser, on the general path).
    return (name, Optional[Union[int, float]] if name in MEASUREMENTS else Optional[Scalar], None)


def _struct_fields(lean: bool = False) -> list[tuple[str, Any, Any]]:
    # In the order the article's request log writes its keys, then the rarer ones: msgspec looks a
    # key up from the field after the last one found, so fields in the record's order are found
    # first time (measured: 0.82 -> 0.73 us a kubernetes record).
    names = ("timestamp", "request_id", "method", "path", *MEASUREMENTS, "status", "model", "error",
             "error_type", "http_status", "status_code", "http_status_code")
    fields = [(name, msgspec.Raw, msgspec.Raw()) for name in ENVELOPE[:4]] if lean else []
    fields += [_scalar(name) for name in names]
    # The kubernetes filter's map, kept as its msgpack bytes (empty when absent).
    fields.append(("kubernetes", msgspec.Raw, msgspec.Raw()))
    if lean:
        fields += [(name, msgspec.Raw, msgspec.Raw()) for name in ENVELOPE[4:]]
    else:
        fields += [(name, None, None) for name in OTHER_SPELLINGS]
    return fields


#: A request record as the fast path reads it. Built from a table so that the
#: other spellings stay in step with the normaliser's own lists. ``gc=False``:
#: it holds only scalars and bytes, never a cycle.
RequestRecord = msgspec.defstruct("RequestRecord", _struct_fields(), gc=False)

#: The same record for the common case, decoded a third faster (measured: 0.57 against 0.82 us a
#: kubernetes record), since it has no field for each of the 36 other spellings to allocate, fill
#: with ``None`` and free. It takes a record only if every key is one :data:`RequestRecord` reads
#: or one of :data:`ENVELOPE` (``forbid_unknown_fields``: another spelling, or any other key, fails
#: it, and the caller decodes with :data:`RequestRecord`). Where it decodes a record, that one gives
#: the same value in every field both have (the other spellings absent, so ``None``; the envelope
#: ignored), so readers take either. ``tests/metrics/test_fast_path.py`` checks that with hypothesis.
LeanRequestRecord = msgspec.defstruct("LeanRequestRecord", _struct_fields(lean=True), gc=False,
                                      forbid_unknown_fields=True)

#: The fields that decide a record's label sets, besides its kubernetes map and the tag (the
#: fast path groups records by their raw values, ``qwen_fluent.metrics.fast``).
LABEL_FIELDS = ("status", "http_status", "status_code", "http_status_code", "error", "error_type", "path", "model",
                "method")


def _columns() -> tuple[tuple[str, str, int], ...]:
    kinds = {name: ("measure", slot) for slot, name in enumerate(MEASUREMENTS)}
    kinds.update({name: ("label", slot) for slot, name in enumerate(LABEL_FIELDS)})
    kinds.update(timestamp=("stamp", 0), request_id=("span", 0), kubernetes=("keyed", 0))
    return tuple((name, *kinds.get(name, ("skip", 0))) for name in LeanRequestRecord.__struct_fields__)


#: :data:`LeanRequestRecord` as a schema for ``qwen_fluent.forward.scan.PackedScanner`` (key, kind,
#: slot): the same keys, so the scanner takes exactly the records the lean decoder takes (it refuses
#: more: see that module); the envelope is skipped, the measurements are columns in
#: :data:`MEASUREMENTS` order, the label fields group records in :data:`LABEL_FIELDS` order with the
#: kubernetes map, ``timestamp`` numbers them by stamp, and ``request_id`` is found where it lies.
COLUMNS = _columns()

#: One scalar field's bytes, as :data:`LeanRequestRecord` reads it (the scanner's stamps and spans).
scalar = msgspec.msgpack.Decoder(Optional[Scalar])

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
