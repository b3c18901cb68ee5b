"""Finding and opening the logs to analyse: paths, globs, ``-``, gzip, bounded lines.

* A path that exists is read as it is; one that does not but holds glob
  characters (``*?[``) is expanded (``**`` included, sorted), and a glob
  matching nothing, like a missing path, is :class:`InputNotFoundError`
  before anything is read: a typo should not produce an empty report.
* ``-`` is standard input (once, wherever it appears).
* A file (or stdin) whose first two bytes are gzip's magic ``1f 8b`` is
  decompressed whatever its name: rotated logs are ``.gz``, ``.1.gz`` or
  have lost their suffix. A truncated or corrupt gzip stream raises
  ``EOFError``/``OSError`` from :func:`lines`: the caller counts it as a read
  error of that file and keeps what was read before it.
* :func:`lines` hands out lines of at most ``max_line_length + 2`` bytes
  (room for the content and ``\\r\\n``): a longer line is cut there (so the
  line reader counts it as too long) and its remainder skipped in
  ``max_line_length`` pieces, never held whole.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import InputNotFoundError

GZIP_MAGIC = b"\x1f\x8b"
#: Read-ahead of each file: large reads are what makes line iteration cheap in CPython.
READ_BUFFER = 1024 * 1024
STDIN = "-"
_GLOB_CHARS = "*?["

# kubelet names container logs <pod>_<namespace>_<container>-<64 hex id>.log
_KUBELET_NAME = re.compile(r"^[^_/]+_[^_/]+_[^_/]+-[0-9a-f]{64}\.log")


@dataclass(frozen=True)
class Input:
    """One input: its name as shown, and the tag its records get (names the pod of a kubelet log file)."""

    name: str
    tag: str = ""

    @property
    def is_stdin(self) -> bool:
        return self.name == STDIN


def tag_for(path: str) -> str:
    """The tag Fluent Bit's tail input would give a kubelet container log, else ``""``.

    The normaliser reads pod, namespace and container from such a tag
    (``....containers.<pod>_<namespace>_<container>-<id>.log``), so ``--by pod``
    works on files copied from ``/var/log/containers`` without a ``kubernetes`` map.
    """
    base = os.path.basename(path)
    if _KUBELET_NAME.match(base):
        return "file.containers." + base[:base.index(".log") + 4]
    return ""


def expand(paths: list[str]) -> list[Input]:
    """The inputs named by ``paths``, in order; :class:`InputNotFoundError` if one names nothing."""
    found: list[Input] = []
    seen: set[str] = set()
    for path in paths:
        if path == STDIN:
            names = [STDIN]
        elif os.path.exists(path):
            if os.path.isdir(path):
                raise InputNotFoundError(f"{path}: is a directory (name its files, or a glob such as {path}/*.log)")
            names = [path]
        elif any(char in path for char in _GLOB_CHARS):
            names = sorted(name for name in glob.glob(path, recursive=True) if os.path.isfile(name))
            if not names:
                raise InputNotFoundError(f"{path}: no file matches")
        else:
            raise InputNotFoundError(f"{path}: no such file")
        for name in names:
            if name not in seen:
                seen.add(name)
                found.append(Input(name, "" if name == STDIN else tag_for(name)))
    return found


class Opened:
    """An open input: :attr:`stream` gives the (decompressed) bytes; :attr:`position` the bytes consumed."""

    def __init__(self, source: Input) -> None:
        self.source = source
        if source.is_stdin:
            self._raw: BinaryIO = sys.stdin.buffer
            self.size = 0
        else:
            self._raw = open(source.name, "rb", buffering=0)  # noqa: SIM115 - closed by close()
            self.size = os.fstat(self._raw.fileno()).st_size
        self._buffered = io.BufferedReader(self._raw, READ_BUFFER)  # type: ignore[arg-type]
        self.compressed = self._buffered.peek(2)[:2] == GZIP_MAGIC
        self.stream: BinaryIO = (
            gzip.GzipFile(fileobj=self._buffered, mode="rb") if self.compressed else self._buffered  # type: ignore[assignment]
        )

    @property
    def position(self) -> int:
        """Bytes of the file read so far (compressed bytes for a gzip file): the progress bar's measure."""
        try:
            return self._raw.tell()
        except OSError:
            return 0

    def close(self) -> None:
        if not self.source.is_stdin:
            self.stream.close()
            self._buffered.close()
            self._raw.close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def lines(stream: BinaryIO, max_line_length: int) -> Iterator[bytes]:
    """The lines of ``stream``, each at most ``max_line_length + 2`` bytes (see the module docstring)."""
    readline = stream.readline
    limit = max_line_length + 2
    while True:
        line = readline(limit)
        if not line:
            return
        yield line
        if len(line) == limit and line[-1] != 0x0A:
            # the reader counts this cut line as too long; skip the rest of it
            while True:
                rest = readline(max_line_length)
                if not rest or rest[-1] == 0x0A:
                    break
