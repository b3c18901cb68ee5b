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
import sys
from typing import IO, Any

from .forward import Message


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
    """A sink that writes every record of every message as one JSON line."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def __call__(self, message: Message) -> None:
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
