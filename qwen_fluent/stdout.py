"""Print decoded records as JSON lines: the receiver's equivalent of Fluent Bit's ``stdout`` output.

``qwen-fluent serve --stdout`` is how people debug a pipeline: it shows what
actually arrived, after Fluent Bit's parsers and filters, before any metric
is made of it. One line per record::

    {"tag": "kube.var.log...", "time": 1743848625.123457, "record": {...}}

with ``"metadata"`` added when Fluent Bit sent its metadata form.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from typing import IO, Any

from .forward import Message
from .stats import ReceiverStats

log = logging.getLogger("qwen_fluent.stdout")

#: ``qwen_fluent_errors_total{reason}`` of a record batch that could not be written to stdout.
STDOUT_FAILED = "stdout_failed"

#: Seconds between two log lines about failing writes. A closed pipe fails every message, thousands
#: a second; one line per 10 s (with the count since the last) says it without flooding the log.
LOG_EVERY = 10.0


def _default(value: Any) -> Any:
    """JSON for what msgpack can carry and JSON cannot.

    (An ExtType other than EventTime is a namedtuple, which json already writes
    as ``[code, data]``, so it never reaches here; its data does, as bytes.)
    """
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if hasattr(value, "to_unix"):  # msgpack.Timestamp
        return value.to_unix()
    return repr(value)


class StdoutSink:
    """A sink that writes every record of every message as one JSON line.

    A write that fails (a closed pipe, a full disk, a closed stream) is
    counted (``stats.errors["stdout_failed"]``, :attr:`failures`) and logged at
    most every :data:`LOG_EVERY` seconds, and the sink returns normally: the
    metrics path has counted the message already, and withholding its ack would
    make the client resend it and count it again (issue 9). Lines that failed
    are lost from stdout, which is a debugging view, not a delivery.
    """

    def __init__(self, stream: IO[str] | None = None, stats: ReceiverStats | None = None,
                 clock: Any = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.stats = stats
        self.clock = clock
        #: Messages whose lines could not be written.
        self.failures = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def __call__(self, message: Message) -> None:
        try:
            self._write(message)
        except (OSError, ValueError) as exc:  # ValueError: a closed stream ("I/O operation on closed file")
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.stats is not None:
            self.stats.errors[STDOUT_FAILED] += 1
        self._unlogged += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            log.warning("cannot write records to stdout (%s: %s); %d message(s) not printed since the last such "
                        "line. They are counted and acked as usual", type(exc).__name__, exc, self._unlogged)
            self._logged_at = now
            self._unlogged = 0

    def _write(self, message: Message) -> None:
        lines = []
        for entry in message.entries:
            item: dict[str, Any] = {"tag": message.tag, "time": entry.time, "record": entry.record}
            if entry.metadata:
                item["metadata"] = entry.metadata
            try:
                lines.append(json.dumps(item, ensure_ascii=False, default=_default))
            except (UnicodeEncodeError, ValueError):
                # Strings that were not valid UTF-8 on the wire: escape them rather than fail.
                lines.append(json.dumps(item, ensure_ascii=True, default=_default))
            except TypeError:
                lines.append(json.dumps(item, ensure_ascii=True, default=_default, skipkeys=True))
        if lines:
            text = "\n".join(lines) + "\n"
            try:
                self.stream.write(text)
            except UnicodeEncodeError:
                self.stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
            self.stream.flush()
