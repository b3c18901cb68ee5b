"""Why a record was not counted: the fixed label values of ``Unrecognised.reason``.

Every record becomes exactly one outcome; these are the reasons a record
becomes :class:`~qwen_fluent.records.events.Unrecognised`. The set is fixed so
that the metric counting them has a bounded label set.
"""

from __future__ import annotations

NOT_A_MAP = "not_a_map"  # the record is not a map (a list, a string...)
EMPTY_RECORD = "empty_record"  # {} : nothing to read
INVALID_REQUEST = "invalid_request"  # request fields present, none usable (all negative, NaN, wrong type...)
INVALID_JSON = "invalid_json"  # a wrapped line that is a broken JSON object: cut short, or the tail of a split line
LINE_TOO_LONG = "line_too_long"  # a JSON line longer than max_line_length: not parsed
EMPTY_LINE = "empty_line"  # the wrapped line is blank
INVALID_PROMPT_CHANGE = "invalid_prompt_change"  # a prompt change without a usable prompt or hash
UNKNOWN_SHAPE = "unknown_shape"  # a map with none of the recognised keys
INTERNAL_ERROR = "internal_error"  # a bug in the normaliser; never expected (fuzz-tested)

#: Every reason, for pre-creating the label set of the counter.
UNRECOGNISED_REASONS = (
    NOT_A_MAP,
    EMPTY_RECORD,
    INVALID_REQUEST,
    INVALID_JSON,
    LINE_TOO_LONG,
    EMPTY_LINE,
    INVALID_PROMPT_CHANGE,
    UNKNOWN_SHAPE,
    INTERNAL_ERROR,
)
