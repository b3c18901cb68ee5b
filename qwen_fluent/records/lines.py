"""Log text lines into records: JSON lines, docker json-file, CRI, plain text.

The Forward receiver gets records that Fluent Bit already framed and parsed.
``qwen-fluent analyze``, ``serve --stdin`` and ``send`` start one step
earlier, from the text of a log file, and this module is that step, sans-IO:
:class:`LineReader` takes one line (or an arbitrary chunk of a byte stream)
at a time and returns the records that input completes, in the shapes
:class:`~qwen_fluent.records.Normaliser` already accepts (docs/records.md,
"Envelopes"):

================================  ============================================  =======================================
line                              example                                       record
================================  ============================================  =======================================
JSON object (the article's log)   ``{"request_id": "r1", "total_time_ms": 9}``  the object as parsed
docker json-file                  ``{"log": "...\\n", "stream": "stdout",``     the object; ``log`` parts without a
                                  ``"time": "..."}``                            trailing newline are joined first
CRI (containerd, CRI-O)           ``2025-04-05T10:23:45.1Z stdout F text``      ``{"time", "stream", "_p": "F",
                                                                                "log": text}``, ``P`` parts joined
plain text (vLLM, TGI, uvicorn)   ``INFO 04-05 10:23:47 metrics.py:351] ...``   ``{"log": text}``
================================  ============================================  =======================================

A docker line is an object whose ``log`` is a string and that has ``stream``
and ``time`` but no ``_p`` (Fluent Bit's own CRI records, saved with its
``stdout`` output, carry ``_p`` and are already joined). A line starting with
``{`` that is not valid JSON is not a record: it is counted as unparsed
(``invalid_json``) and a few of them are kept as samples. Blank lines are
counted (:attr:`LineReader.blank`) and skipped.

Partial lines are joined per stream (``stdout`` and ``stderr`` interleave in
one file), as Fluent Bit's ``docker`` and ``cri`` multiline parsers do. One
reader is meant for one log file: parts of different files must not meet.

Bounds (counted, never fatal):

* :data:`DEFAULT_MAX_LINE_LENGTH` (1 MiB) per line, in bytes without the line
  ending. Docker
  and containerd split lines at 16 KiB and a request log line is a few hundred
  bytes; a longer line is not a record we can use, and the bound keeps one
  line of a runaway file from taking the memory. Longer lines are dropped as
  ``line_too_long``; :meth:`LineReader.data` discards them while framing,
  without holding more than the bound.
* :data:`DEFAULT_MAX_PARTIAL_LENGTH` (1 MiB) per joined partial line (bytes
  of CRI text, characters of a docker ``log`` string): 64 parts of 16 KiB.
  Past it the parts are dropped up to and including the final part,
  counted once as ``partial_too_long``.
* :data:`MAX_STREAMS` pending partial lines (one per stream name); a further
  stream name flushes the oldest pending line as it stands.
* :data:`MAX_SAMPLES` unparsed lines kept, each cut to :data:`SAMPLE_LENGTH`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import msgspec

#: Longest line accepted, in bytes (see the module docstring for the reason).
DEFAULT_MAX_LINE_LENGTH = 1024 * 1024
#: Longest joined partial line, in bytes: 64 docker/containerd parts of 16 KiB.
DEFAULT_MAX_PARTIAL_LENGTH = 1024 * 1024
#: Pending partial lines at once, one per stream name: files have two (stdout, stderr).
MAX_STREAMS = 8
#: Unparsed lines kept as samples, and the characters kept of each: enough to show the
#: kind of breakage to a person, bounded whatever the input.
MAX_SAMPLES = 5
SAMPLE_LENGTH = 200

INVALID_JSON = "invalid_json"
LINE_TOO_LONG = "line_too_long"
PARTIAL_TOO_LONG = "partial_too_long"
#: Every reason a line is counted as unparsed.
UNPARSED_REASONS = (INVALID_JSON, LINE_TOO_LONG, PARTIAL_TOO_LONG)

_STREAMS = (b"stdout", b"stderr")
# msgspec decodes a JSON object two to three times faster than json.loads. Where it
# refuses a line (NaN or Infinity, which Python's json writes; invalid UTF-8; lone
# surrogate escapes; numbers out of float range), json.loads decides, so what is
# accepted, and how, is exactly what json.loads accepts, as in the normaliser.
_decode = msgspec.json.Decoder().decode


class Sample(NamedTuple):
    """One unparsed line, kept to show a person: why, where (1-based line number), and its start."""

    reason: str
    line_number: int
    text: str


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _loads(line: bytes) -> Any:
    """``json.loads``, with invalid UTF-8 replaced rather than refused; ``None`` for anything not JSON."""
    try:
        return json.loads(line)
    except UnicodeDecodeError:
        try:
            return json.loads(_text(line))
        except (ValueError, RecursionError):
            return None
    except (ValueError, RecursionError):
        return None


class LineReader:
    """Turns log lines into records; one instance per input file or stream.

    :meth:`line` takes one complete line (``bytes`` or ``str``, with or
    without its line ending); :meth:`data` takes any chunk of a byte stream
    and frames lines itself; :meth:`close` ends the input and returns what
    was still pending (an unterminated last line, unfinished partial lines).
    Each returns the list of records completed, often empty or of one.

    Counters, for the caller to report: :attr:`lines` (lines seen, blank and
    oversized included), :attr:`records` (records returned), :attr:`blank`,
    :attr:`joined` (records built from more than one partial line),
    :attr:`unparsed` (reason -> lines) and :attr:`samples` (the first
    :data:`MAX_SAMPLES` unparsed lines).
    """

    __slots__ = (
        "max_line_length",
        "max_partial_length",
        "lines",
        "records",
        "blank",
        "joined",
        "unparsed",
        "samples",
        "_pending",
        "_buffer",
        "_discarding",
    )

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_partial_length: int = DEFAULT_MAX_PARTIAL_LENGTH,
    ) -> None:
        if max_line_length < 1 or max_partial_length < 1:
            raise ValueError("max_line_length and max_partial_length must be positive")
        self.max_line_length = max_line_length
        self.max_partial_length = max_partial_length
        self.lines = 0
        self.records = 0
        self.blank = 0
        self.joined = 0
        self.unparsed: dict[str, int] = dict.fromkeys(UNPARSED_REASONS, 0)
        self.samples: list[Sample] = []
        # (kind, stream) -> [first record, parts, bytes so far, parts count, dropped]
        self._pending: dict[tuple[str, Any], list[Any]] = {}
        self._buffer = bytearray()  # data(): the unterminated end of the stream so far
        self._discarding = False  # data(): inside a line already counted too long

    @property
    def unparsed_total(self) -> int:
        """Lines counted as unparsed, all reasons together."""
        return sum(self.unparsed.values())

    # -- input ----------------------------------------------------------------

    def line(self, line: bytes | str) -> list[dict[str, Any]]:
        """Read one complete line; return the records it completes.

        The length bound applies to the line without its ending (``\\n`` or ``\\r\\n``).
        """
        if type(line) is str:
            line = line.encode("utf-8", "surrogatepass")
        self.lines += 1
        line = line.rstrip(b"\r\n")
        if len(line) > self.max_line_length:
            self._unparsed(LINE_TOO_LONG, line)
            return []
        out = self._line(line)
        self.records += len(out)
        return out

    def data(self, chunk: bytes) -> list[dict[str, Any]]:
        """Read any chunk of a byte stream; lines are split on ``\\n``. Memory is bounded by the line limit."""
        out: list[dict[str, Any]] = []
        buffer = self._buffer
        start = 0
        limit = self.max_line_length
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif buffer:
                buffer += chunk[start:end + 1]
                out += self.line(bytes(buffer))
                buffer.clear()
            else:
                out += self.line(chunk[start:end + 1])
            start = end + 1
        if not self._discarding:
            buffer += chunk[start:]
            if len(buffer) > limit:
                # too long already: count it now and drop the rest up to its newline
                self.lines += 1
                self._unparsed(LINE_TOO_LONG, bytes(buffer[:SAMPLE_LENGTH]))
                buffer.clear()
                self._discarding = True
        return out

    def close(self) -> list[dict[str, Any]]:
        """End of input: the unterminated last line, then every pending partial line as it stands.

        A partial line never finished (the file was cut, or rotated) is kept as
        the record it would have been: the normaliser then says whether it is
        usable (a cut JSON object is ``invalid_json`` there).
        """
        out: list[dict[str, Any]] = []
        if self._buffer:
            out += self.line(bytes(self._buffer))
            self._buffer.clear()
        self._discarding = False
        for key in list(self._pending):
            record = self._flush(key)
            if record is not None:
                out.append(record)
                self.records += 1
        return out

    def read(self, lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
        """Every record of an iterable of lines (a file opened in binary mode, say), then :meth:`close`."""
        for line in lines:
            yield from self.line(line)
        yield from self.close()

    # -- the line kinds -------------------------------------------------------

    def _line(self, line: bytes) -> list[dict[str, Any]]:
        if not line or line.isspace():  # isspace() copies nothing, unlike strip()
            self.blank += 1
            return []
        first = line[0]
        if first == 0x7B or (first in b" \t" and line.lstrip()[:1] == b"{"):  # "{"
            try:
                record = _decode(line)
            except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
                record = _loads(line)
            if type(record) is not dict:
                self._unparsed(INVALID_JSON, line)
                return []
            log = record.get("log")
            if type(log) is str and "stream" in record and "time" in record and "_p" not in record:
                return self._docker(record, log)
            return [record]
        if line[4:5] == b"-" and line[10:11] == b"T":
            parts = line.split(b" ", 3)
            if len(parts) >= 3 and parts[1] in _STREAMS and parts[2][:1] in b"PF" and parts[2]:
                return self._cri(parts)
        return [{"log": _text(line)}]

    def _docker(self, record: dict[str, Any], log: str) -> list[dict[str, Any]]:
        key = ("docker", record.get("stream"))
        pending = self._pending.get(key)
        if log.endswith("\n"):
            if pending is None:
                return [record]
            self._add(key, pending, log, len(log))
            done = self._flush(key)
            return [] if done is None else [done]
        return self._part(key, pending, record, log, len(log))

    def _cri(self, parts: list[bytes]) -> list[dict[str, Any]]:
        stream = parts[1].decode("ascii")
        text = parts[3] if len(parts) == 4 else b""
        key = ("cri", stream)
        pending = self._pending.get(key)
        if parts[2][:1] == b"F":
            if pending is None:
                return [{"time": _text(parts[0]), "stream": stream, "_p": "F", "log": _text(text)}]
            self._add(key, pending, text, len(text))
            done = self._flush(key)
            return [] if done is None else [done]
        record = {"time": _text(parts[0]), "stream": stream, "_p": "F", "log": ""}
        return self._part(key, pending, record, text, len(text))

    # -- partial lines --------------------------------------------------------

    def _part(self, key: tuple[str, Any], pending: list[Any] | None, record: dict[str, Any], part: Any,
              size: int) -> list[dict[str, Any]]:
        """A partial line: start or extend the pending line of its stream."""
        out: list[dict[str, Any]] = []
        if pending is None:
            if len(self._pending) >= MAX_STREAMS:
                oldest = next(iter(self._pending))
                flushed = self._flush(oldest)
                if flushed is not None:
                    out.append(flushed)
            self._pending[key] = pending = [record, [], 0, 0, False]
        self._add(key, pending, part, size)
        return out

    def _add(self, key: tuple[str, Any], pending: list[Any], part: Any, size: int) -> None:
        if pending[4]:
            return  # already too long: dropping up to the final part
        pending[2] += size
        if pending[2] > self.max_partial_length:
            pending[4] = True
            pending[1] = []
            self._unparsed(PARTIAL_TOO_LONG, part if type(part) is bytes else part.encode("utf-8", "replace"))
            return
        pending[1].append(part)
        pending[3] += 1

    def _flush(self, key: tuple[str, Any]) -> dict[str, Any] | None:
        record, parts, _, count, dropped = self._pending.pop(key)
        if dropped:
            return None
        if count > 1:
            self.joined += 1
        if key[0] == "cri":
            record["log"] = _text(b"".join(parts))
        else:
            record["log"] = "".join(parts)
        return record

    def _unparsed(self, reason: str, line: bytes) -> None:
        self.unparsed[reason] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(Sample(reason, self.lines, _text(line[:SAMPLE_LENGTH]).rstrip("\r\n")))
