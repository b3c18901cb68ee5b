"""Log levels: from a level field of a JSON record, or from the head of a plain line.

Levels fold into :data:`~qwen_fluent.records.events.LEVELS`. A plain line is
looked at only in its first :data:`HEAD_CHARS` characters and first
:data:`HEAD_TOKENS` words, which covers every format below at a bounded cost
whatever the line's length:

- vLLM: ``INFO 04-05 10:23:47 metrics.py:351] ...``, ``(APIServer pid=1) INFO 09-01 ... [loggers.py:123] ...``
- uvicorn: ``INFO:     10.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK``
- Python logging: ``WARNING:root:...``, ``2025-04-05 10:23:47,123 - app - ERROR - ...``
- Rust tracing (TGI): ``2025-04-05T10:23:47.123Z  INFO text_generation_router: ...`` (ANSI colours removed)
- gunicorn ``[...] [1] [INFO] ...``, env_logger ``[... WARN target] ...``
- klog: ``I0405 10:23:47.123456 1 file.go:12] ...``; logfmt: ``level=info ...``
"""

from __future__ import annotations

from typing import Any

from .values import strip_ansi

DEBUG, INFO, WARNING, ERROR, CRITICAL, UNKNOWN = "debug", "info", "warning", "error", "critical", "unknown"

#: Level names, lower-cased, from Python logging, syslog, Rust tracing, Go,
#: GCP severities and klog's one-letter prefixes.
LEVEL_WORDS: dict[str, str] = {
    **dict.fromkeys(("debug", "dbg", "trace", "verbose", "d"), DEBUG),
    **dict.fromkeys(("info", "information", "informational", "notice", "i"), INFO),
    **dict.fromkeys(("warning", "warn", "w"), WARNING),
    **dict.fromkeys(("error", "err", "e"), ERROR),
    **dict.fromkeys(("critical", "crit", "fatal", "panic", "alert", "emerg", "emergency", "f"), CRITICAL),
}

#: Upper-case level words recognised as a word of a plain line. Single letters
#: are left out (a line's "I" or "E" is usually prose); lower-case words too
#: (``info`` in a message is prose), except after ``level=``.
_LINE_WORDS = {word.upper(): level for word, level in LEVEL_WORDS.items() if len(word) > 1}
_KLOG = {"I": INFO, "W": WARNING, "E": ERROR, "F": CRITICAL}

#: Keys a JSON log record keeps its level under (Python json loggers, tracing,
#: structlog, GCP/Stackdriver, logfmt-to-JSON).
LEVEL_KEYS = ("level", "levelname", "severity", "lvl", "log.level")

HEAD_CHARS = 160  # the level sits within the first ~60 characters of every format above
HEAD_TOKENS = 7  # "2025-04-05 10:23:47,123 - name - INFO": the level is the 6th word
_PUNCTUATION = "[]():,|<>-"
_LOGFMT = ("level=", "lvl=", "severity=")
_MAX_LEVEL_WORD = 16


def level_from_value(value: Any) -> str:
    """The folded level of a level field's value; ``unknown`` if not a known word.

    Numbers are ``unknown``: Python (30 = warning) and pino (30 = info)
    disagree on what they mean.
    """
    if type(value) is not str or len(value) > _MAX_LEVEL_WORD:
        return UNKNOWN
    level = LEVEL_WORDS.get(value)
    if level is None:
        level = LEVEL_WORDS.get(value.strip().lower(), UNKNOWN)
    return level


def level_from_record(record: dict[Any, Any]) -> str | None:
    """The level of a JSON log record from its first level key, or ``None`` if it has none."""
    for key in LEVEL_KEYS:
        value = record.get(key)
        if value is not None:
            return level_from_value(value)
    return None


def level_from_line(line: str) -> str:
    """The level of a plain log line, from its head; ``unknown`` when none is found."""
    head = strip_ansi(line[:HEAD_CHARS])
    words = head.split(None, HEAD_TOKENS)[:HEAD_TOKENS]
    if not words:
        return UNKNOWN
    first = words[0]
    if len(first) == 5 and first[0] in _KLOG and first[1:].isdigit():  # klog: I0405
        return _KLOG[first[0]]
    for word in words:
        token = word.strip(_PUNCTUATION)
        if ":" in token:  # "INFO:root:message", "INFO:"
            token = token.partition(":")[0]
        level = _LINE_WORDS.get(token)
        if level is not None:
            return level
        if word.startswith(_LOGFMT):
            return level_from_value(word.partition("=")[2].strip('"'))
    return UNKNOWN
