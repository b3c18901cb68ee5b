"""Reading what a line needs from bodies that flow past, without holding them back (sans-IO).

Each observer is fed the bytes *after* they were passed on, and keeps only bounded
copies (see the limits in :mod:`.config`). None of them keeps text: ``content``,
``text`` and ``messages`` are tested for emptiness and dropped, so no prompt or
completion ever reaches a line.

- :class:`RequestBody`: ``model``, ``stream`` from the request JSON.
- :class:`JsonBody`: ``id``, ``model``, ``usage``, ``error`` from a non-streamed response.
- :class:`EventStream`: the same from an OpenAI server-sent-event stream, plus the
  moment of the first content chunk and the number of content chunks.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from .config import MAX_ID_LENGTH

#: The largest token count read from a body; beyond is not a count (matches the receiver's bound).
MAX_TOKENS = 100_000_000
#: ``error_type`` becomes a label value in the receiver: short words like ``BadRequestError``.
MAX_ERROR_TYPE = 64
#: Kept from the start of an oversized JSON body: ``id``, ``object``, ``created``, ``model`` sit there.
HEAD_BYTES = 4 * 1024
#: Kept from the end of an oversized JSON body: ``usage`` sits after ``choices``.
TAIL_BYTES = 64 * 1024

_decode = msgspec.json.decode
_DecodeError = msgspec.DecodeError
_CONTENT_KEYS = ("content", "reasoning_content", "reasoning")


def token_count(value: Any) -> int | None:
    """A usable token count (an int 0..1e8, not a bool), else ``None``."""
    return value if type(value) is int and 0 <= value <= MAX_TOKENS else None


def short_text(value: Any, limit: int = MAX_ID_LENGTH) -> str | None:
    """A non-empty string cut to ``limit`` characters, else ``None``."""
    if type(value) is str and value:
        return value[:limit]
    return None


def error_type(error: Any, depth: int = 0) -> str | None:
    """The type word of an OpenAI-style error (``{"type": ...}``, possibly nested under ``error``).

    vLLM has sent ``{"object": "error", "type": ...}`` and ``{"error": {"type": ...}}``;
    a string ``code`` is the fallback (a number is an HTTP status, not a type). Free-text
    ``message`` is never used: its values are unbounded.
    """
    if type(error) is not dict:
        return None
    found = short_text(error.get("type"), MAX_ERROR_TYPE)
    if found is None and depth == 0:
        found = error_type(error.get("error"), 1)
    if found is None:
        found = short_text(error.get("code"), MAX_ERROR_TYPE)
    return found


class RequestBody:
    """Copies the request body up to ``limit`` bytes; when complete, reads ``model`` and ``stream``."""

    __slots__ = ("_over", "_parts", "_size", "limit", "model", "stream")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._over = False
        self.model: str | None = None
        self.stream: bool | None = None

    def feed(self, chunk: bytes, more: bool) -> None:
        if not self._over and chunk:
            self._size += len(chunk)
            if self._size > self.limit:
                self._over = True
                self._parts = []
            else:
                self._parts.append(bytes(chunk))
        if not more and not self._over:
            body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            self._over = True  # read once; a repeated final message changes nothing
            try:
                doc = _decode(body)
            except _DecodeError:
                return
            if type(doc) is dict:
                self.model = short_text(doc.get("model"))
                stream = doc.get("stream")
                self.stream = stream if type(stream) is bool else None


class Summary:
    """What a response body said, filled by the observers below."""

    __slots__ = (
        "body_error",
        "content_chunks",
        "error_type",
        "first_content",
        "input_tokens",
        "model",
        "output_tokens",
        "response_id",
    )

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.error_type: str | None = None
        #: the body itself reported an error (an error object, or an error event mid-stream)
        self.body_error = False
        self.first_content: float | None = None
        self.content_chunks = 0

    def take_document(self, doc: dict[Any, Any]) -> None:
        """``id``, ``model``, ``usage`` and ``error`` of one response or chunk object."""
        if self.response_id is None:
            self.response_id = short_text(doc.get("id"))
        if self.model is None:
            self.model = short_text(doc.get("model"))
        usage = doc.get("usage")
        if type(usage) is dict:
            output = token_count(usage.get("completion_tokens"))
            if output is not None:
                # the last usage wins: with vLLM's continuous_usage_stats every chunk carries one
                self.output_tokens = output
                self.input_tokens = token_count(usage.get("prompt_tokens"))
        error = doc.get("error")
        if error is not None:
            self.error_type = error_type(error) or self.error_type
            self.body_error = True
        elif doc.get("object") == "error":
            self.error_type = error_type(doc) or self.error_type
            self.body_error = True


class JsonBody:
    """A non-streamed JSON response: a whole copy up to ``limit``, else its head and tail."""

    __slots__ = ("_head", "_parts", "_size", "_tail", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._head = b""
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        if self._size <= self.limit:
            self._parts.append(bytes(chunk))
            return
        if self._parts:  # just went over: keep the head, start the tail
            whole = b"".join(self._parts)
            self._parts = []
            self._head = whole[:HEAD_BYTES]
            self._tail = bytearray(whole[-TAIL_BYTES:])
        self._tail += chunk
        if len(self._tail) > 2 * TAIL_BYTES:  # trimmed in steps, so the copy is amortised
            del self._tail[:-TAIL_BYTES]

    def finish(self, summary: Summary) -> None:
        if self._size <= self.limit:
            try:
                doc = _decode(b"".join(self._parts))
            except _DecodeError:
                return
            if type(doc) is dict:
                summary.take_document(doc)
            return
        head = self._head.decode("utf-8", "replace")
        tail = bytes(self._tail[-TAIL_BYTES:]).decode("utf-8", "replace")
        summary.response_id = short_text(scan_value(head, "id"))
        summary.model = short_text(scan_value(head, "model"))
        usage = scan_value(tail, "usage")
        if type(usage) is dict:
            summary.take_document({"usage": usage})


_raw_decode = json.JSONDecoder().raw_decode


def scan_value(text: str, key: str) -> Any:
    """The JSON value of the last ``"key":`` in a fragment of a JSON object, else ``None``.

    Used on the kept head and tail of an oversized body. A quote inside a string value is
    escaped (``\\"key\\"``), so an occurrence preceded by a backslash is text, not a key.
    """
    needle = f'"{key}"'
    end = len(text)
    while True:
        at = text.rfind(needle, 0, end)
        if at < 0:
            return None
        end = at
        if at > 0 and text[at - 1] == "\\":
            continue
        i = at + len(needle)
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i >= len(text) or text[i] != ":":
            continue
        i += 1
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        try:
            return _raw_decode(text, i)[0]
        except ValueError:
            continue


class EventStream:
    """An OpenAI streaming response (``text/event-stream``): ``data:`` lines, one JSON chunk each.

    Lines are split across body messages at any byte, so an unfinished line is carried
    over, up to ``max_line`` bytes; a longer line is skipped to its end. ``data: [DONE]``
    ends the stream. A content chunk is a choice whose ``delta`` has non-empty
    ``content`` / ``reasoning_content`` / ``reasoning`` / ``tool_calls`` (chat) or whose
    ``text`` is non-empty (completions): the role-only first chunk and the final
    ``finish_reason`` / usage chunks are not content.
    """

    __slots__ = ("_pending", "_skip", "bad_events", "done", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._pending = b""
        self._skip = False
        self.done = False
        #: ``data:`` payloads that were not JSON (counted, not fatal)
        self.bad_events = 0

    def feed(self, chunk: bytes, now: float, summary: Summary) -> None:
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # a bytearray or memoryview from the app: our copy must not change under us
        data = self._pending + chunk if self._pending else chunk
        lines = data.split(b"\n")
        rest = lines.pop()  # after the last newline: an unfinished line, usually b""
        if self._skip:
            if not lines:
                return  # still inside a line skipped as too long: keep nothing of it
            self._skip = False
            lines[0] = b""  # the end of that line
        for line in lines:
            if line[:5] == b"data:":
                self._line(line, now, summary)
        if len(rest) > self.max_line:
            self._skip = True
            rest = b""
        self._pending = rest

    def _line(self, line: bytes, now: float, summary: Summary) -> None:
        # only data: lines reach here; event:, id:, retry:, comments and blank lines carry nothing we read
        payload = line[5:].strip()
        if not payload:
            return
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            doc = _decode(payload)
        except _DecodeError:
            self.bad_events += 1
            return
        if type(doc) is not dict:
            return
        summary.take_document(doc)
        choices = doc.get("choices")
        if type(choices) is not list:
            return
        for choice in choices:
            if type(choice) is dict and _has_content(choice):
                summary.content_chunks += 1
                if summary.first_content is None:
                    summary.first_content = now


def _has_content(choice: dict[Any, Any]) -> bool:
    text = choice.get("text")
    if type(text) is str and text:
        return True
    delta = choice.get("delta")
    if type(delta) is not dict:
        return False
    for key in _CONTENT_KEYS:
        value = delta.get(key)
        if type(value) is str and value:
            return True
    return bool(delta.get("tool_calls"))
