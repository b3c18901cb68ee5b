"""``qwen-fluent explain``: what the receiver makes of one record or log line, and why.

The receiver counts records it does not recognise under a reason
(``qwen_fluent_unrecognised_records_total{reason}``) and ``serve`` logs a
sample of their keys; this command takes one such record (or any record) and
shows the whole story: how the input was read (a JSON object, a docker
json-file or CRI container line, a plain text line as Fluent Bit's ``tail``
forwards it: ``{"log": line}``), the event the normaliser makes of it with
every field in its unit, the pod it is attributed to, and the metric samples
this one record adds with the labels they get. For an unrecognised record:
the reason in words and, where it helps, the key that was probably meant.

Nothing is re-implemented here: the record goes through the receiver's own
:class:`~qwen_fluent.records.Normaliser` and into a fresh
:class:`~qwen_fluent.metrics.LLMMetrics` built from the same configuration
(``--config``, ``QWEN_FLUENT_*``), and the labels shown are the ones its
collector exposes, so label choices, caps and the namespace are the serving
ones. Text lines are framed by :class:`~qwen_fluent.records.lines.LineReader`,
as ``qwen-fluent analyze`` does, so a CRI line split in parts (``P``) is
joined as it would be in a file.

Exit status: 0 when every record was recognised, 1 when one was not (so a
script can test a log line), 2 for a usage or configuration error.

``--json`` prints one object per record, a stable schema:

- ``input``: ``{"kind", "line"}``; ``kind`` is ``json_object``,
  ``docker_json_file``, ``cri``, ``text``, ``unparsed`` (a line that is not
  JSON, taken as ``{"log": line}``) or ``partial`` (a split line's start,
  unfinished at the end of the input);
- ``record``: the record the normaliser was given;
- ``event``: ``request``, ``engine_stats``, ``prompt_change``, ``log`` or
  ``unrecognised``;
- ``fields``: the event's fields (``null`` where the record lacked one), and
  ``units``: the unit of each measured field (``s``, ``tokens``, ``bytes``,
  ``tokens/s``, ``requests``, ``ratio``);
- ``source``: ``namespace``, ``pod``, ``container``, ``host``, ``labels``;
- ``metrics``: ``[{"name", "type", "labels", "change", "value"}]``, where
  ``change`` is ``inc`` (a counter, by ``value``), ``observe`` (a histogram
  observes ``value``) or ``set`` (a gauge or info is ``value``);
- for ``unrecognised`` only: ``reason`` (records/reasons.py), ``why`` (a
  sentence), ``hints`` (likely intended keys, unusable values) and ``keys``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any

HELP = "show what the receiver makes of one record or log line, or why it is not recognised"

EPILOG = """\
examples:
  qwen-fluent explain '{"request_id": "r1", "total_time_ms": 1876, "status": "success"}'
  qwen-fluent explain 'INFO 04-05 10:23:47 metrics.py:351] Avg prompt throughput: 1.0 tokens/s, Running: 3 reqs'
  kubectl logs POD | head -5 | qwen-fluent explain
  qwen-fluent explain --json --config qwen-fluent.toml < record.json

Exit status: 0 every record recognised, 1 one was not, 2 usage or configuration error.
"""

#: Units of the event fields (docs/records.md): values are already in these base units.
UNITS: dict[str, str] = {
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "total_s": "s",
    "queue_s": "s",
    "inference_s": "s",
    "ttft_s": "s",
    "tpot_s": "s",
    "gpu_memory_bytes": "bytes",
    "timestamp": "s since the epoch",
    "prompt_throughput": "tokens/s",
    "generation_throughput": "tokens/s",
    "running": "requests",
    "waiting": "requests",
    "swapped": "requests",
    "gpu_kv_cache_usage": "ratio",
    "cpu_kv_cache_usage": "ratio",
    "prefix_cache_hit_rate": "ratio",
}

#: Event type names, by outcome class name (records/events.py), as the output and the JSON say them.
EVENTS: dict[str, str] = {
    "RequestEvent": "request",
    "EngineStats": "engine_stats",
    "PromptChange": "prompt_change",
    "LogEvent": "log",
    "Unrecognised": "unrecognised",
}

#: What each unrecognised reason means, in words a user can act on (records/reasons.py has the set;
#: tests/cli/test_explain.py checks that every reason has its sentence).
REASONS: dict[str, str] = {
    "not_a_map": "the record is not a map (a list, a string, a number); Fluent Bit records are maps",
    "empty_record": "the record is an empty map: nothing to read",
    "invalid_request": "it has request fields, but none with a usable value (a negative, NaN, non-numeric or "
                       "implausibly large number; a bare number on a key without a unit such as total_time)",
    "invalid_json": "the wrapped log line starts like a JSON object but does not parse: cut short, or one part of a "
                    "container log line split in two (join them with Fluent Bit's multiline.parser cri or docker)",
    "line_too_long": "the wrapped JSON line is longer than [records] max_line_length, so it was not parsed",
    "empty_line": "the wrapped log line is blank",
    "invalid_prompt_change": "it announces a system-prompt change but carries no usable prompt or hash",
    "unknown_shape": "a map with none of the keys the normaliser reads: request fields, a TGI span, a system "
                     "prompt, a log line (under [records] log_keys) or a level",
    "internal_error": "the normaliser failed on it: a bug, please report it with this record",
}

#: Request keys that label or qualify a request without making one on their own (docs/records.md's field table).
_REQUEST_LABEL_KEYS = ("status", "path", "method", "model", "error", "error_type", "timestamp")

#: Bookkeeping families that every first record of a group moves; not about the record itself.
_SKIP_FAMILIES = ("fluent_label_sets",)


class ExplainError(Exception):
    """Nothing to explain (no argument and empty standard input)."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain", help=HELP, description=HELP[0].upper() + HELP[1:] + ".", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("record", nargs="?", metavar="RECORD",
                        help="a JSON record or a log line; without it, standard input is read, one per line "
                             "(a whole JSON object spread over several lines counts as one)")
    parser.add_argument("--tag", default="",
                        help="the Forward tag the record would arrive with (a tail tag naming a container log "
                             "file, kube.var.log.containers.POD_NAMESPACE_CONTAINER-ID.log, gives the pod)")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="read [records] and [metrics] from this file, as serve --config does")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per record, with the keys input {kind, line}, record, event, "
                             "fields, units, source, metrics [{name, type, labels, change, value}], and for an "
                             "unrecognised record reason, why, hints, keys")


# -- reading the input ----------------------------------------------------------------


def _kind(text: str, record: Any) -> str:
    """How a line was read, for the output (presentation only: the reader already decided)."""
    if isinstance(record, dict) and "_p" in record and not text.lstrip().startswith("{"):
        return "cri"
    try:
        parsed = json.loads(text)
    except ValueError:
        return "text"
    if isinstance(parsed, dict) and {"log", "stream", "time"} <= parsed.keys():
        return "docker_json_file"
    return "json_object" if isinstance(parsed, dict) else "text"


KIND_WORDS = {
    "json_object": "a JSON object",
    "docker_json_file": "a docker json-file container log line",
    "cri": "a CRI container log line (containerd, CRI-O)",
    "text": "a text line, forwarded as Fluent Bit's tail does: {\"log\": line}",
    "unparsed": "a line that does not parse as JSON, forwarded as {\"log\": line}",
    "partial": "the unfinished start of a split container line, as it stands at the end of the input",
}


def records_of(texts: Iterable[str]) -> Iterator[tuple[str, str, Any]]:
    """``(kind, line, record)`` for each record the lines make, as the line reader frames them.

    A line the reader refuses (a JSON object cut short) is what a ``tail``
    input without a parser forwards: ``{"log": line}``; the normaliser then
    gives its reason. Parts of a split container line wait for their end.
    """
    from ..records.lines import LineReader

    reader = LineReader()
    for text in texts:
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        unparsed = reader.unparsed_total
        records = reader.line(text)
        for record in records:
            yield _kind(text, record), text, record
        if not records and reader.unparsed_total > unparsed:
            yield "unparsed", text, {"log": text}
    for record in reader.close():
        yield "partial", "", record


def _inputs(args: argparse.Namespace) -> list[str]:
    """The lines to explain: the argument, or standard input; a whole JSON object over several lines is one."""
    text = args.record if args.record is not None else sys.stdin.read()
    if not text.strip():
        raise ExplainError("nothing to explain: give a record as an argument or on standard input")
    if "\n" in text.strip():
        try:
            parsed = json.loads(text)
        except ValueError:
            return text.splitlines()
        if isinstance(parsed, dict):
            return [json.dumps(parsed)]
    return text.splitlines()


# -- explaining one record ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-safe copy (bytes as text, tuples as lists)."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity
    return value


def _samples(metrics: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str, dict[str, str], float]]:
    """Every sample the collector exposes: (name, labels) -> (family, type, labels in exposition order, value)."""
    out = {}
    for family in metrics.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = (family.name, family.type, dict(sample.labels), sample.value)
    return out


def metric_changes(outcome: Any, config: Any) -> list[dict[str, Any]]:
    """The samples one outcome adds to an empty :class:`LLMMetrics` of this configuration.

    A counter gives its increment, a histogram the value it observes (its
    ``_sum``, when its ``_count`` rose; buckets left out), a gauge or info
    the value it is set to. Series that only appear at zero (statuses
    zero-filled beside the real one, a histogram of a field the record lacks)
    are not the record's doing and are left out.
    """
    from ..metrics import LLMMetrics

    metrics = LLMMetrics(config.metrics)
    before = _samples(metrics)
    metrics.observe(outcome, None)
    after = _samples(metrics)
    changes = []
    for (name, key), (family, kind, labels, value) in after.items():
        old = before.get((name, key))
        delta = value - (old[3] if old else 0)
        if family.endswith(_SKIP_FAMILIES) or (old is not None and delta == 0):
            continue
        if kind == "histogram":
            count = after.get((family + "_count", key))
            was = before.get((family + "_count", key))
            if not name.endswith("_sum") or count is None or count[3] == (was[3] if was else 0):
                continue
            change, shown, name = "observe", delta, family
        elif kind == "counter":
            if delta == 0:
                continue
            change, shown = "inc", delta
        else:
            change, shown = "set", value
        changes.append({"name": name, "type": kind, "labels": labels, "change": change, "value": shown})
    return changes


def _hints(reason: str, record: Any, config: Any) -> list[str]:
    """What the user probably meant, for the reasons where the record says it."""
    from ..records.levels import LEVEL_KEYS
    from ..records.normaliser import HTTP_STATUS_KEYS, MEASUREMENT_KEYS, REQUEST_KEYS
    from ..records.prompt import EVENT_KEYS, PROMPT_KEYS

    if not isinstance(record, dict):
        return []
    keys = [str(_plain(k)) for k in record]
    if reason == "unknown_shape":
        known = sorted(set(REQUEST_KEYS) | set(HTTP_STATUS_KEYS) | set(LEVEL_KEYS) | set(PROMPT_KEYS)
                       | set(EVENT_KEYS) | set(config.records.log_keys) | set(_REQUEST_LABEL_KEYS)
                       | {"span", "spans", "kubernetes"})
        hints = [f"key {key!r}: did you mean {close[0]!r}?"
                 for key in keys for close in [difflib.get_close_matches(key, known, n=1)] if close]
        return hints or ["none of its keys is one the normaliser reads; docs/records.md lists them"]
    if reason == "invalid_request":
        return [f"{key}={_plain(record[key])!r} is not a usable value"
                for key in record if str(_plain(key)) in MEASUREMENT_KEYS]
    if reason == "line_too_long":
        return [f"[records] max_line_length is {config.records.max_line_length} characters"]
    return []


def explain(record: Any, tag: str, config: Any, normaliser: Any) -> dict[str, Any]:
    """The explanation of one record as a JSON-ready dict (the ``--json`` schema)."""
    outcome = normaliser(record, tag)
    event = EVENTS[type(outcome).__name__]
    fields = {name: _plain(value) for name, value in outcome._asdict().items() if name != "source"}
    source = outcome.source._asdict()
    out: dict[str, Any] = {
        "event": event,
        "fields": fields,
        "units": {name: UNITS[name] for name in fields if name in UNITS},
        "source": _plain(source),
        "metrics": metric_changes(outcome, config),
    }
    if event == "unrecognised":
        out["reason"] = outcome.reason
        out["why"] = REASONS.get(outcome.reason, "")
        out["hints"] = _hints(outcome.reason, record, config)
        out["keys"] = [str(_plain(k)) for k in record] if isinstance(record, dict) else []
    return out


# -- printing --------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def render(kind: str, line: str, result: dict[str, Any]) -> str:
    """The explanation as a few aligned lines for a terminal."""
    lines = [f"read as   {KIND_WORDS[kind]}"]
    if result["event"] == "unrecognised":
        lines.append(f"event     not recognised: {result['reason']}")
        lines.append(f"why       {result['why']}")
        if result["keys"]:
            lines.append(f"keys      {', '.join(result['keys'])}")
        lines += [f"hint      {hint}" for hint in result["hints"]]
    else:
        lines.append(f"event     {result['event']}")
        width = max(len(name) for name in result["fields"])
        for name, value in result["fields"].items():
            unit = result["units"].get(name, "")
            shown = _show(value)
            lines.append(f"  {name:<{width}}  {shown}{' ' + unit if unit and value is not None else ''}")
    source = result["source"]
    if any(source[k] for k in ("namespace", "pod", "container", "host")):
        where = " ".join(f"{k}={source[k]}" for k in ("namespace", "pod", "container", "host") if source[k])
        lines.append(f"source    {where}")
    else:
        lines.append("source    none (no kubernetes map, and the tag names no container log file)")
    lines.append("metrics   what this one record adds, with its labels:")
    for change in result["metrics"]:
        value = _show(change["value"])
        what = {"inc": f"+{value}", "observe": f"observes {value}", "set": f"= {value}"}[change["change"]]
        lines.append(f"  {change['name']}{_labels(change['labels'])} {what}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load
    from ..records import Normaliser

    try:
        config = load(args.config)
        texts = _inputs(args)
    except (ConfigError, ExplainError) as exc:
        print(f"qwen-fluent explain: error: {exc}", file=sys.stderr)
        return 2
    normaliser = Normaliser(config.records)
    status = 0
    first = True
    for kind, line, record in records_of(texts):
        result = explain(record, args.tag, config, normaliser)
        if result["event"] == "unrecognised":
            status = 1
        if args.json:
            print(json.dumps({"input": {"kind": kind, "line": line}, "record": _plain(record), **result},
                             ensure_ascii=False, allow_nan=False, default=str))
        else:
            if not first:
                print()
            print(render(kind, line, result))
        first = False
    return status
