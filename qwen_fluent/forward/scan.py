"""A PackedForward payload read straight into columns, by a schema, in one C pass: :class:`PackedScanner`.

:func:`~.packed.split_packed` with a typed record (msgspec) is the pure-Python
fast path: it builds one ``Struct`` per record, which the consumer then reads
field by field into columns, and frees. For a message of 1000 request logs
that is most of the receiver's cost (measured on the kubernetes benchmark:
decode 0.54, grouping by label values 0.38, columns 0.17, freeing 0.17 us a
record). :class:`PackedScanner` does all of it in C, building no Python
object per record: measurements as float64 columns, label values grouped
into codes (each distinct combination's bytes and first record handed back
once), a stamp's distinct values likewise, and where each record and each
*span* field lies in the payload, for the few records the consumer then
decodes (the first of each new label set, the exemplars).

**It reads less than it refuses.** The C scanner (``_scan.c``) takes a
payload only if every entry is ``[EventTime, map]`` and every record has
only keys of the schema, each once, with values of the types its kind takes,
all strings valid UTF-8; anything else, or anything it is unsure of, makes
:meth:`PackedScanner.scan` return ``None`` and the caller reads the payload
the way it did before (``split_packed``, then the reference decoder). So a
scanned message always has the answer the typed path would have given:
``tests/forward/test_scan.py`` checks the columns against msgspec's own
decoding with hypothesis, and ``tests/metrics/test_fast_path.py`` the metrics
against the reference.

**Optional.** The extension is built at install time where a C compiler is
present (``setup.py``: an optional extension, so a machine without one still
installs); without it :attr:`PackedScanner.available` is ``False`` and every
payload takes the typed path. ``QWEN_FLUENT_NO_SCAN=1`` turns it off at run
time (the benchmark's before/after, and a way out should it misbehave).
Bounds: its working memory is O(entries) (at most ``max_array_len``),
freed before it returns; it keeps nothing between calls.

This module knows the framing, not the records: the schema (which key is a
measurement, a label, ...) is the consumer's
(:data:`qwen_fluent.records.typed.COLUMNS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NamedTuple

try:
    from ._scan import Scanner as _Scanner
except ImportError:  # not built (no C compiler at install): the typed path reads every payload
    _Scanner = None

#: What the scanner does with a key's value, by name (``_scan.c``'s ``K_*``).
KINDS = {
    # any valid value, not kept (Fluent Bit's envelope: time, stream, _p, ...)
    "skip": 0,
    # an int, a float or nil, into column ``slot`` of ``measures`` as float64 (NaN: nil or absent)
    "measure": 1,
    # a str, int, float or nil: its bytes, with every label's and the keyed value's, group the records
    "label": 2,
    # a str, int, float or nil: records numbered by its distinct bytes (at most one stamp key)
    "stamp": 3,
    # a str, int, float or nil: where it lies, for the records the consumer reads it of
    "span": 4,
    # any valid value (a map), at most ``max_keyed`` bytes: part of the label grouping (at most one)
    "keyed": 5,
}

#: Set to turn the scanner off without rebuilding (``PackedScanner.available`` is then ``False``).
DISABLE_ENV = "QWEN_FLUENT_NO_SCAN"


class ScannedPayload(NamedTuple):
    """One payload's columns, as bytes in native order (the consumer views them as arrays).

    ``n`` records. ``measures``: n x M float64. ``times``: n float64, each
    entry's EventTime (seconds + nanoseconds / 1e9, as
    :func:`~.packed.entry_seconds` reads it). ``label_codes``: n int64, the
    index of each record's label combination in ``label_keys`` (its label
    values' msgpack bytes in slot order, nil for an absent one, then the
    keyed value's bytes), whose first record is ``label_firsts``.
    ``stamp_codes``: n int64 into ``stamp_values`` (msgpack bytes; nil for
    absent); ``stamp_seconds``: per stamp value, float64 seconds since the
    epoch where it is an ISO 8601 string of the commonest form
    (``YYYY-MM-DDTHH:MM:SS``, up to 9 fractional digits, ``Z``, ``+00:00`` or
    nothing, from 1970 to 2255), read as ``datetime`` reads it, else NaN (the
    consumer parses those itself). ``records``: n x 2 int64, each record's start and end in
    ``payload``. ``spans``: n x S x 2 int64, each span field's start and end
    (0, 0 where absent).
    """

    n: int
    measures: bytes
    times: bytes
    label_codes: bytes
    label_keys: list[bytes]
    label_firsts: list[int]
    stamp_codes: bytes
    stamp_values: list[bytes]
    stamp_seconds: bytes
    records: bytes
    spans: bytes
    payload: bytes


class PackedScanner:
    """``scan(payload, size, max_entries)``: a payload's columns by ``schema``, or ``None`` to read it otherwise.

    ``schema``: ``(key, kind, slot)`` for every key a record may have
    (``kind`` a name from :data:`KINDS`); a record with any other key is
    refused. ``max_string``: the longest string value, in bytes, a label,
    stamp or span takes. ``max_keyed``: the longest keyed value, in bytes.
    """

    def __init__(self, schema: Iterable[tuple[str, str, int]], max_string: int, max_keyed: int) -> None:
        self.schema = tuple(schema)
        compiled = tuple((key.encode(), KINDS[kind], slot) for key, kind, slot in self.schema)
        self._scanner = None
        if _Scanner is not None and not os.environ.get(DISABLE_ENV):
            self._scanner = _Scanner(compiled, max_string, max_keyed)

    @property
    def available(self) -> bool:
        """Whether payloads are scanned at all (the extension is built and not turned off)."""
        return self._scanner is not None

    def scan(self, payload: bytes, size: Any, max_entries: int) -> ScannedPayload | None:
        """The columns of ``payload``, whose message announced ``size`` entries (its ``size`` option,
        any value); ``None`` where the scanner refuses it or is not available."""
        if self._scanner is None:
            return None
        expected = size if type(size) is int and 0 < size <= max_entries else -1
        out = self._scanner.scan(payload, expected, max_entries)
        if out is None:
            return None
        return ScannedPayload(*out, payload)
