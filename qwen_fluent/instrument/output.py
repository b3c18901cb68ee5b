"""Where the request lines go: stdout (what Fluent Bit tails), stderr, a :class:`logging.Logger`, or a file.

Every sink writes one whole line per call and flushes it, so that a line is on its way
to the container runtime (and Fluent Bit's ``tail``) when the request ends, and two
lines never interleave inside one another. The choice, in order: the ``output``
argument, else ``QWEN_FLUENT_INSTRUMENT_OUTPUT``, else stdout:

- ``"stdout"`` / ``"-"`` / ``None``, ``"stderr"``, or ``sys.stdout`` / ``sys.stderr``;
- a :class:`logging.Logger`, or ``"logger:NAME"``: ``logger.info(line)`` (the logger's
  handlers decide the format; give it one that writes the message alone, or the
  receiver sees a prefix before the JSON);
- any other string or :class:`os.PathLike`: a file opened once for appending;
- any object with ``write(str)`` (and optionally ``flush()``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from .config import ENV_PREFIX
from .errors import InstrumentConfigError

#: A sink takes one line without its newline.
Sink = Callable[[str], None]


def _stdout(line: str) -> None:
    # Looked up on every call: a test runner or the server may replace sys.stdout after start.
    stream = sys.stdout
    stream.write(line + "\n")
    stream.flush()


def _stderr(line: str) -> None:
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


def _stream_sink(stream: Any) -> Sink:
    flush = getattr(stream, "flush", None)

    def write(line: str) -> None:
        stream.write(line + "\n")
        if flush is not None:
            flush()

    return write


def _logger_sink(logger: logging.Logger) -> Sink:
    def write(line: str) -> None:
        logger.info(line)

    return write


def _file_sink(path: str | os.PathLike[str]) -> Sink:
    try:
        # Line buffered, appended: several workers may share one file, and O_APPEND keeps
        # each line's write at the end. Open for the life of the process (no per-line open).
        stream: TextIO = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    except OSError as exc:
        raise InstrumentConfigError(f"output: cannot open {os.fspath(path)!r} for appending: {exc}") from exc
    return _stream_sink(stream)


def resolve_output(output: Any = None, environ: Mapping[str, str] | None = None) -> Sink:
    """The sink for ``output`` (see the module docstring); raises :class:`InstrumentConfigError`."""
    if output is None:
        env = os.environ if environ is None else environ
        output = env.get(ENV_PREFIX + "OUTPUT", "").strip() or "stdout"
    if isinstance(output, logging.Logger):
        return _logger_sink(output)
    if output is sys.stdout or output in ("stdout", "-"):
        return _stdout
    if output is sys.stderr or output == "stderr":
        return _stderr
    if isinstance(output, str):
        if output.startswith("logger:"):
            name = output[len("logger:"):]
            if not name:
                raise InstrumentConfigError("output: 'logger:' needs a logger name, e.g. 'logger:qwen_fluent.requests'")
            return _logger_sink(logging.getLogger(name))
        return _file_sink(output)
    if isinstance(output, os.PathLike):
        return _file_sink(output)
    if callable(getattr(output, "write", None)):
        return _stream_sink(output)
    raise InstrumentConfigError(f"output: stdout, stderr, a logging.Logger, a file path or a writable stream, got {output!r}")
