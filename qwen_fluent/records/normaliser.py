"""The record normaliser: one Forward record in, exactly one outcome out.

:class:`Normaliser` maps any record (any map msgpack can decode) to a
:class:`RequestEvent`, :class:`LogEvent`, :class:`EngineStats`,
:class:`PromptChange` or :class:`Unrecognised`, and never raises. The order of
the tests is the order of likelihood, so that the common case (a structured
request log merged into the root by Fluent Bit) costs a set test and a dozen
dict lookups:

1. request fields at the root (``Merge_Log On``, a ``parser`` filter, or an
   application forwarding directly) -> request;
2. a TGI ``Success`` event (``span``/``spans``) -> request;
3. a system prompt or its hash -> prompt change;
4. a wrapped log line under a :attr:`~NormaliserConfig.log_keys` key: a JSON
   object is parsed and goes through 1-5 once more; a vLLM stats line becomes
   engine stats; a plain TGI ``Success`` line a request; anything else a log
   event with its level;
5. a level field -> log event; else unrecognised (``unknown_shape``).

See ``docs/records.md`` for every shape, field, unit and table.
"""

from __future__ import annotations

import json
from typing import Any

from . import reasons
from .config import NormaliserConfig
from .events import (
    NO_SOURCE,
    EngineStats,
    LogEvent,
    Outcome,
    PromptChange,
    RequestEvent,
    Source,
    Unrecognised,
)
from .levels import UNKNOWN as UNKNOWN_LEVEL
from .levels import level_from_line, level_from_record
from .prompt import EVENT_KEYS, HASH_KEYS, PROMPT_EVENTS, PROMPT_KEYS, TEXT_KEY, prompt_hash
from .source import SourceResolver
from .status import SUCCESS, UNKNOWN, fold_status, method
from .tgi import Timings, json_success, looks_like_plain_success, plain_success
from .values import (
    GIB,
    MAX_DURATION_S,
    MAX_TOKENS,
    MIB,
    duration_string,
    epoch_seconds,
    gpu_bytes,
    iso_seconds,
    label,
    seconds,
    strip_ansi,
    tokens,
)
from .vllm import engine_index, looks_like_stats, parse_stats

_MS = 1000.0  # units per second
_S = 1.0


def _spellings(name: str, *bare: str) -> tuple[tuple[str, float | None], ...]:
    """``name_ms``, ``name_s``, ``name_seconds``, then bare keys read as duration strings only."""
    return ((f"{name}_ms", _MS), (f"{name}_s", _S), (f"{name}_seconds", _S)) + tuple((key, None) for key in bare)


# Accepted spellings of each request field, in order of precedence: the first
# usable one wins. A bare key (``total_time``) is read only as a duration
# string with a unit ("1.2s"): a bare number has no unit, and guessing one
# would silently scale a metric by 1000.
TOTAL = _spellings("total_time", "total_time")
QUEUE = _spellings("queue_time", "queue_time")
INFERENCE = _spellings("inference_time", "inference_time")
TTFT = _spellings("time_to_first_token") + _spellings("ttft", "time_to_first_token", "ttft")
TPOT = (
    _spellings("time_per_output_token")
    + _spellings("tpot")
    + _spellings("time_per_token", "time_per_output_token", "tpot", "time_per_token")
)
# GPU tools (nvidia-smi, NVML, torch.cuda) count binary units even where they
# print "MB", so ``_mb`` and ``_gb`` are MiB and GiB.
GPU_MEMORY = (
    ("gpu_memory_mb", MIB),
    ("gpu_memory_mib", MIB),
    ("gpu_memory_bytes", 1.0),
    ("gpu_memory_gb", GIB),
    ("gpu_memory_gib", GIB),
)
INPUT_TOKENS = ("input_tokens", "prompt_tokens")  # prompt_tokens: OpenAI's usage naming
OUTPUT_TOKENS = ("output_tokens", "completion_tokens", "generated_tokens")
HTTP_STATUS_KEYS = ("http_status", "status_code", "http_status_code")

#: Keys whose presence makes a record a request candidate (measurements).
MEASUREMENT_KEYS = frozenset(
    [key for spec in (TOTAL, QUEUE, INFERENCE, TTFT, TPOT, GPU_MEMORY) for key, _ in spec]
    + [*INPUT_TOKENS, *OUTPUT_TOKENS]
)
#: ... or ``request_id``: a request with no usable measurement still counts if
#: it has a request id and a usable status (a request that failed early).
REQUEST_KEYS = MEASUREMENT_KEYS | {"request_id"}
#: The canonical spellings (the structured request log's own); any other
#: measurement key sends a record down the general path.
_CANONICAL = frozenset(
    ("input_tokens", "output_tokens", "total_time_ms", "queue_time_ms", "inference_time_ms", "gpu_memory_mb")
)
_OTHER_SPELLINGS = MEASUREMENT_KEYS - _CANONICAL
_MAX_MS = int(MAX_DURATION_S * 1000)
_FRAGMENT_STARTS = frozenset(',"')
_PROMPT_TRIGGER_KEYS = PROMPT_KEYS | frozenset(EVENT_KEYS)


def _duration(record: dict[Any, Any], spellings: tuple[tuple[str, float | None], ...]) -> float | None:
    for key, per_second in spellings:
        value = record.get(key)
        if value is not None:
            found = seconds(value, per_second) if per_second is not None else duration_string(value)
            if found is not None:
                return found
    return None


def _tokens(record: dict[Any, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = record.get(key)
        if value is not None:
            found = tokens(value)
            if found is not None:
                return found
    return None


def _path(value: Any, limit: int) -> str:
    """The route without its query string or fragment (they would make every URL a new label value)."""
    if type(value) is not str:
        return ""
    if "?" in value or "#" in value:
        value = value.partition("?")[0].partition("#")[0]
    return label(value, limit)


class Normaliser:
    """Maps one Forward record to exactly one outcome; see the module docstring.

    Call it as ``normaliser(record, tag)``. It never raises: a bug that would
    raise is caught and reported as ``Unrecognised("internal_error")`` (the
    fuzz tests assert it never happens). Instances hold small bounded caches
    (pod metadata, tags, the last timestamp string) and are meant for one
    thread, the receiver's event loop.
    """

    __slots__ = (
        "config",
        "_limit",
        "_max_line",
        "_log_keys",
        "_vllm",
        "_tgi",
        "_levels",
        "_tag_source",
        "_sources",
        "_last_stamp",
    )

    def __init__(self, config: NormaliserConfig | None = None) -> None:
        self.config = config if config is not None else NormaliserConfig()
        self._limit = self.config.max_label_length
        self._max_line = self.config.max_line_length
        self._log_keys = self.config.log_keys
        self._vllm = self.config.parse_vllm_stats
        self._tgi = self.config.parse_tgi
        self._levels = self.config.parse_levels
        self._tag_source = self.config.source_from_tag
        self._sources = SourceResolver(self._limit, self.config.model_labels)
        self._last_stamp: tuple[str, float | None] = ("", None)

    def __call__(self, record: Any, tag: Any = "") -> Outcome:
        try:
            return self._record(record, tag)
        except Exception:  # noqa: BLE001 - the promise is "never raises"; counted, not hidden
            return Unrecognised(reasons.INTERNAL_ERROR, NO_SOURCE)

    # -- the record and its envelope ---------------------------------------

    def _record(self, record: Any, tag: Any) -> Outcome:
        if not isinstance(record, dict):
            return Unrecognised(reasons.NOT_A_MAP, NO_SOURCE)
        if not record:
            return Unrecognised(reasons.EMPTY_RECORD, NO_SOURCE)
        source, label_model = self.source(record.get("kubernetes"), tag)
        return self._classify(record, source, label_model, 0)

    def source(self, meta: Any, tag: Any) -> tuple[Source, str]:
        """Where a record came from, and the model a pod label names: from its ``kubernetes`` map, else its tag."""
        if type(meta) is dict:
            return self._sources.kubernetes(meta)
        if self._tag_source and type(tag) is str and tag:
            return self._sources.tag(tag)
        return NO_SOURCE, ""

    def _classify(self, record: dict[Any, Any], source: Source, label_model: str, depth: int) -> Outcome:
        if not REQUEST_KEYS.isdisjoint(record):
            event = self._request(record, source, label_model)
            if event is not None:
                return event
            if not MEASUREMENT_KEYS.isdisjoint(record):
                return Unrecognised(reasons.INVALID_REQUEST, source)
            # only a request_id: an application log line naming its request; read on
        if self._tgi and ("span" in record or "spans" in record):
            timings = json_success(record)
            if timings is not None:
                return self._tgi_event(timings, self._timestamp(record.get("timestamp")), source, label_model)
        if not _PROMPT_TRIGGER_KEYS.isdisjoint(record):
            outcome = self._prompt(record, source, label_model)
            if outcome is not None:
                return outcome
        for key in self._log_keys:
            value = record.get(key)
            if value is None:
                continue
            if type(value) is str:
                outcome = self._line(value, source, label_model, depth)
                if type(outcome) is LogEvent and outcome.level == UNKNOWN_LEVEL and self._levels:
                    level = level_from_record(record)
                    if level is not None:
                        return LogEvent(level, source)
                return outcome
            if type(value) is dict and depth == 0:
                if not value:
                    return Unrecognised(reasons.EMPTY_RECORD, source)
                return self._classify(value, source, label_model, 1)
        level = level_from_record(record)
        if level is not None:
            return LogEvent(level if self._levels else UNKNOWN_LEVEL, source)
        return Unrecognised(reasons.UNKNOWN_SHAPE, source)

    # -- requests -----------------------------------------------------------

    def _request(self, record: dict[Any, Any], source: Source, label_model: str) -> RequestEvent | None:
        get = record.get
        if _OTHER_SPELLINGS.isdisjoint(record):
            # The common case: only the canonical keys, read inline. A value
            # that is present but unusable is missing; no other spelling exists.
            # (NaN fails the range check and takes the slow path, which drops it.)
            value = get("input_tokens")
            input_tokens = value if type(value) is int and 0 <= value <= MAX_TOKENS else tokens(value)
            value = get("output_tokens")
            output_tokens = value if type(value) is int and 0 <= value <= MAX_TOKENS else tokens(value)
            value = get("total_time_ms")
            total = value / 1000.0 if (type(value) is int or type(value) is float) and 0 <= value <= _MAX_MS else seconds(value, _MS)
            value = get("queue_time_ms")
            queue = value / 1000.0 if (type(value) is int or type(value) is float) and 0 <= value <= _MAX_MS else seconds(value, _MS)
            value = get("inference_time_ms")
            inference = value / 1000.0 if (type(value) is int or type(value) is float) and 0 <= value <= _MAX_MS else seconds(value, _MS)
            value = get("gpu_memory_mb")
            memory = gpu_bytes(value, MIB) if value is not None else None
            ttft = tpot = None
        else:
            input_tokens = _tokens(record, INPUT_TOKENS)
            output_tokens = _tokens(record, OUTPUT_TOKENS)
            total = _duration(record, TOTAL)
            queue = _duration(record, QUEUE)
            inference = _duration(record, INFERENCE)
            ttft = _duration(record, TTFT)
            tpot = _duration(record, TPOT)
            memory = None
            for key, scale in GPU_MEMORY:
                value = get(key)
                if value is not None:
                    memory = gpu_bytes(value, scale)
                    if memory is not None:
                        break

        error = get("error")
        error_type_value = get("error_type")
        http_status = None
        for key in HTTP_STATUS_KEYS:
            http_status = get(key)
            if http_status is not None:
                break
        status, code = fold_status(get("status"), http_status, bool(error) or bool(error_type_value))
        limit = self._limit
        request_id = label(get("request_id"), limit)

        if (
            input_tokens is None
            and output_tokens is None
            and total is None
            and queue is None
            and inference is None
            and ttft is None
            and tpot is None
            and memory is None
            and not (request_id and (status != UNKNOWN or code is not None))
        ):
            return None

        if tpot is None and output_tokens is not None:
            if ttft is not None and total is not None and output_tokens > 1 and total >= ttft:
                tpot = (total - ttft) / (output_tokens - 1)  # decode time per token after the first
            elif inference is not None and output_tokens > 0:
                tpot = inference / output_tokens  # TGI's definition; includes prefill

        if type(error_type_value) is str:
            error_type = label(error_type_value, limit)
        elif type(error) is dict:  # OpenAI-style {"error": {"type": ..., "code": ...}}
            kind = error.get("type")
            if type(kind) is not str:
                kind = error.get("code")
            error_type = label(kind, limit)
        else:
            error_type = ""  # free-text errors are never a label: unbounded values

        model = label(get("model"), limit) or label_model
        return RequestEvent(
            status,
            _path(get("path"), limit),
            model,
            request_id,
            method(get("method")),
            input_tokens,
            output_tokens,
            total,
            queue,
            inference,
            ttft,
            tpot,
            memory,
            code,
            error_type,
            self._timestamp(get("timestamp")),
            source,
        )

    def _tgi_event(self, timings: Timings, timestamp: float | None, source: Source, model: str) -> RequestEvent:
        return RequestEvent(
            SUCCESS,
            timings.path,
            model,
            "",
            "POST" if timings.path else "",
            None,
            timings.output_tokens(),
            timings.total,
            timings.queue,
            timings.inference,
            None,
            timings.per_token,
            None,
            None,
            "",
            timestamp,
            source,
        )

    def timestamp(self, value: Any) -> float | None:
        """Seconds since the epoch from a record's ``timestamp`` value (ISO string or number), else ``None``."""
        return self._timestamp(value)

    def _timestamp(self, value: Any) -> float | None:
        if type(value) is str:
            # Request logs stamp whole seconds, so consecutive records share the
            # string: a one-entry cache saves the parse for most of them.
            last = self._last_stamp
            if value == last[0]:
                return last[1]
            stamp = iso_seconds(value)
            self._last_stamp = (value, stamp)
            return stamp
        if value is None:
            return None
        return epoch_seconds(value)

    # -- prompt changes -----------------------------------------------------

    def _prompt(self, record: dict[Any, Any], source: Source, label_model: str) -> Outcome | None:
        announced = False
        for key in EVENT_KEYS:
            value = record.get(key)
            if type(value) is str and value in PROMPT_EVENTS:
                announced = True
        carried = record.get(TEXT_KEY) is not None or any(record.get(key) is not None for key in HASH_KEYS)
        if not (announced or carried):
            return None
        digest = prompt_hash(record)
        if digest is None:
            return Unrecognised(reasons.INVALID_PROMPT_CHANGE, source)
        return PromptChange(digest, label(record.get("model"), self._limit) or label_model, source)

    # -- wrapped lines ------------------------------------------------------

    def _line(self, text: str, source: Source, label_model: str, depth: int) -> Outcome:
        if len(text) > self._max_line:
            if text[:64].lstrip().startswith("{"):
                return Unrecognised(reasons.LINE_TOO_LONG, source)
            return LogEvent(level_from_line(text) if self._levels else UNKNOWN_LEVEL, source)
        line = text.strip()
        if not line:
            return Unrecognised(reasons.EMPTY_LINE, source)
        if line[0] == "{" and depth == 0:
            try:
                parsed = json.loads(line)
            except (ValueError, RecursionError):
                return Unrecognised(reasons.INVALID_JSON, source)
            if type(parsed) is not dict:
                return Unrecognised(reasons.INVALID_JSON, source)
            if not parsed:
                return Unrecognised(reasons.EMPTY_RECORD, source)
            return self._classify(parsed, source, label_model, 1)
        if line[-1] == "}" and line[0] in _FRAGMENT_STARTS:
            # the tail of a JSON object whose line was split (docker splits at
            # 16 KiB, CRI marks partial lines "P"): a broken record, not prose
            return Unrecognised(reasons.INVALID_JSON, source)
        if "\x1b" in line:
            line = strip_ansi(line)
        if self._vllm and looks_like_stats(line):
            values = parse_stats(line)
            if values is not None:
                return EngineStats(*values, label_model, source, engine_index(line))
        if self._tgi and looks_like_plain_success(line):
            timings = plain_success(line)
            if timings is not None:
                first = line.split(None, 1)[0]
                return self._tgi_event(timings, iso_seconds(first), source, label_model)
        return LogEvent(level_from_line(line) if self._levels else UNKNOWN_LEVEL, source)


#: The default normaliser, for callers that need no configuration.
normalise = Normaliser()
