"""Reading the Fluent Bit captures in tests/records/data the way the receiver does.

The msgpack options mirror the receiver's wire decoder (``raw=False``,
``unicode_errors='surrogateescape'``, ``strict_map_key=False``, EventTime as
float seconds); they are repeated here so these tests do not depend on the
forward package.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgpack

DATA = Path(__file__).parent / "data"
WIRE_OPTIONS: dict[str, Any] = dict(raw=False, use_list=True, strict_map_key=False, unicode_errors="surrogateescape")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        sec, nsec = struct.unpack(">II", data)
        return sec + nsec / 1e9
    return msgpack.ExtType(code, data)


def decode(payload: bytes) -> Any:
    """One msgpack object decoded with the receiver's options."""
    return msgpack.unpackb(payload, ext_hook=_ext_hook, **WIRE_OPTIONS)


def capture(case: str) -> list[tuple[str, dict[Any, Any]]]:
    """(tag, record) for every entry of every Forward-mode message in ``<case>.client.bin``."""
    unpacker = msgpack.Unpacker(ext_hook=_ext_hook, **WIRE_OPTIONS)
    unpacker.feed((DATA / f"{case}.client.bin").read_bytes())
    out = []
    for message in unpacker:
        tag, entries = message[0], message[1]
        assert isinstance(entries, list), "these captures are all Forward mode"
        for _time, record in entries:
            out.append((tag, record))
    return out


def container_log(prefix: str) -> tuple[str, list[str]]:
    """(file name, lines) of the container log file in data/k8s-inputs whose name starts with ``prefix``."""
    (path,) = sorted((DATA / "k8s-inputs").glob(prefix + "*.log"))
    return path.name, path.read_text(encoding="utf-8").splitlines()
