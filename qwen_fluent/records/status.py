"""Folding a request's status, HTTP status and method into small fixed sets.

``status`` becomes one of :data:`~qwen_fluent.records.events.STATUSES`, the
HTTP method one of :data:`METHODS` (or ``OTHER``), so that the label sets
built from them stay bounded whatever the logs say. Tables are documented in
``docs/records.md``.
"""

from __future__ import annotations

from typing import Any

SUCCESS = "success"
ERROR = "error"
CLIENT_ERROR = "client_error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
UNKNOWN = "unknown"

#: Status words, lower-cased, and what they fold into.
STATUS_WORDS: dict[str, str] = {
    **dict.fromkeys(("success", "succeeded", "successful", "ok", "completed", "complete", "done", "finished"), SUCCESS),
    **dict.fromkeys(
        ("error", "errored", "failed", "failure", "fail", "internal_error", "server_error", "exception"), ERROR
    ),
    **dict.fromkeys(
        ("client_error", "bad_request", "invalid_request", "invalid", "rejected", "validation_error", "unauthorized",
         "forbidden", "not_found", "rate_limited", "too_many_requests"),
        CLIENT_ERROR,
    ),
    **dict.fromkeys(("timeout", "timed_out", "timedout", "time_out", "deadline_exceeded", "gateway_timeout"), TIMEOUT),
    **dict.fromkeys(
        ("cancelled", "canceled", "aborted", "abort", "client_closed", "client_disconnected", "disconnected"), CANCELLED
    ),
}

_MAX_STATUS_WORD = 32  # longer than any word above: not looked up

#: The methods kept as they are; any other non-empty method is ``OTHER``.
METHODS = frozenset(("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"))
OTHER_METHOD = "OTHER"


def status_from_http(code: int) -> str:
    """Fold an HTTP status code: 2xx success; 408, 504 timeout; 499 cancelled; 4xx client_error; 5xx error."""
    if 200 <= code < 300:
        return SUCCESS
    if code == 408 or code == 504:
        return TIMEOUT
    if code == 499:  # nginx's "client closed request"
        return CANCELLED
    if 400 <= code < 500:
        return CLIENT_ERROR
    if 500 <= code < 600:
        return ERROR
    return UNKNOWN  # 1xx, 3xx: not an outcome of an inference request


def http_code(value: Any) -> int | None:
    """An HTTP status code in [100, 599] from an int or a digit string; else ``None``."""
    t = type(value)
    if t is int:
        return value if 100 <= value <= 599 else None
    if t is str and len(value) == 3 and value.isdigit() and value.isascii():
        code = int(value)
        return code if 100 <= code <= 599 else None
    if t is float and value.is_integer() and 100.0 <= value <= 599.0:
        return int(value)
    return None


def status_word(value: Any) -> str | None:
    """The folded status for a status word (case-insensitive), or ``None`` if not a known word."""
    if type(value) is not str or len(value) > _MAX_STATUS_WORD:
        return None
    folded = STATUS_WORDS.get(value)
    if folded is None:
        folded = STATUS_WORDS.get(value.strip().lower().replace("-", "_").replace(" ", "_"))
    return folded


def fold_status(status: Any, http_status: Any, has_error: bool) -> tuple[str, int | None]:
    """The request's folded status and its HTTP code.

    Precedence: a recognised ``status`` word wins (the application's own
    verdict: a stream that fails after its 200 header says ``error`` with
    ``http_status`` 200); then the HTTP code, from ``http_status`` or a numeric
    ``status``; then ``error`` if the record carries an error; else ``unknown``.
    """
    code = http_code(http_status) if http_status is not None else None
    if type(status) is str:
        folded = STATUS_WORDS.get(status) or status_word(status)
        if folded is not None:
            return folded, code
    if code is None and status is not None:
        code = http_code(status)
    if code is not None:
        return status_from_http(code), code
    return (ERROR if has_error else UNKNOWN), None


def method(value: Any) -> str:
    """``GET``, ``POST``, ... as upper case; any other non-empty method ``OTHER``; ``""`` if absent."""
    if type(value) is not str:
        return ""
    if value in METHODS:
        return value
    if len(value) > 16:
        return OTHER_METHOD
    upper = value.strip().upper()
    if upper in METHODS:
        return upper
    return OTHER_METHOD if upper else ""
