"""A minimal Fluent Forward client for tests: msgpack over a plain socket.

Independent of :mod:`qwen_fluent.forward` on purpose (it encodes what the
spec and Fluent Bit send, so it checks the receiver instead of agreeing with
it): Forward mode ``[tag, [[time, record], ...], {"chunk": id, "size": n}]``
and PackedForward mode, with EventTime as msgpack ext type 0, waiting for the
``{"ack": id}`` reply.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

#: Seconds to wait for the receiver's ack.
ACK_TIMEOUT = 10.0


def event_time(t: float) -> msgpack.ExtType:
    """Fluent's EventTime: ext type 0, big-endian seconds and nanoseconds."""
    seconds = int(t)
    return msgpack.ExtType(0, struct.pack(">II", seconds, int(round((t - seconds) * 1e9)) % 1_000_000_000))


def forward_message(tag: str, entries: list[tuple[float, dict[str, Any]]], chunk: str | None,
                    packed: bool = False) -> bytes:
    """One Forward (or PackedForward) message carrying ``entries``."""
    option: dict[str, Any] = {"size": len(entries)}
    if chunk is not None:
        option["chunk"] = chunk
    pairs = [[event_time(t), record] for t, record in entries]
    if packed:
        payload = b"".join(msgpack.packb(p, use_bin_type=True) for p in pairs)
        return msgpack.packb([tag, payload, option], use_bin_type=True)
    return msgpack.packb([tag, pairs, option], use_bin_type=True)


class ForwardClient:
    """One TCP connection to a Forward receiver; a context manager."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=ACK_TIMEOUT)
        self._unpacker = msgpack.Unpacker(raw=False)

    def send(self, tag: str, entries: list[tuple[float, dict[str, Any]]], chunk: str | None = None,
             packed: bool = False) -> None:
        """Send one message; with ``chunk``, wait for its ack and check it."""
        self.sock.sendall(forward_message(tag, entries, chunk, packed))
        if chunk is not None:
            reply = self._read()
            if reply != {"ack": chunk}:
                raise AssertionError(f"expected ack {chunk!r}, got {reply!r}")

    def _read(self) -> Any:
        while True:
            for obj in self._unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("receiver closed the connection before acking")
            self._unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ForwardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
