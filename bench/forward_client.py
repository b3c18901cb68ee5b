"""A Forward client that replays pre-built messages with acks on, as Fluent Bit's forward output does.

Each message carries a ``chunk`` option; the client keeps at most ``window``
messages unacknowledged per connection (Fluent Bit flushes a bounded number
of chunks per output worker, and waits for each ack before releasing it) and
checks that every ack names the chunk it is waiting for, in order. The clock
runs from the first byte written to the last ack read.

``bench/run.py`` runs :func:`child` in a forked process, so the messages
(hundreds of MiB) are shared with the parent instead of being copied.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from multiprocessing.connection import Connection

import msgpack

#: Bytes per recv(): acks are ~30 bytes each, so one read takes every ack there is.
READ_SIZE = 65536


class AckError(Exception):
    """The receiver acked something other than the chunk that was due, or closed the connection."""


def _wait_acks(sock: socket.socket, unpacker: msgpack.Unpacker, pending: collections.deque[str],
               until: int) -> None:
    """Read acks until at most ``until`` messages are unacknowledged."""
    while True:
        for ack in unpacker:
            if not pending:
                raise AckError(f"ack {ack!r} with nothing in flight")
            expected = pending.popleft()
            if ack != {"ack": expected}:
                raise AckError(f"got {ack!r}, expected ack of chunk {expected!r}")
        if len(pending) <= until:
            return
        data = sock.recv(READ_SIZE)
        if not data:
            raise AckError(f"connection closed with {len(pending)} messages unacknowledged")
        unpacker.feed(data)


def _send(sock: socket.socket, messages: list[bytes], chunks: list[str], indices: range, window: int) -> int:
    unpacker = msgpack.Unpacker(raw=False)
    pending: collections.deque[str] = collections.deque()
    for i in indices:
        if len(pending) >= window:
            _wait_acks(sock, unpacker, pending, window - 1)
        sock.sendall(messages[i])
        pending.append(chunks[i])
    _wait_acks(sock, unpacker, pending, 0)
    return len(indices)


def replay(port: int, messages: list[bytes], chunks: list[str], window: int = 4,
           connections: int = 1) -> tuple[float, int]:
    """Send every message to 127.0.0.1:``port``; return (seconds, messages acked).

    With several connections, message ``i`` goes on connection
    ``i % connections``, each connection with its own window and thread.
    """
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    acked = [0] * connections
    errors: list[BaseException] = []

    def run(c: int) -> None:
        try:
            acked[c] = _send(socks[c], messages, chunks, range(c, len(messages), connections), window)
        except BaseException as exc:  # reported to the parent; a thread cannot raise into it
            errors.append(exc)

    try:
        t0 = time.perf_counter()
        if connections == 1:
            run(0)
        else:
            threads = [threading.Thread(target=run, args=(c,)) for c in range(connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        seconds = time.perf_counter() - t0
    finally:
        for s in socks:
            s.close()
    if errors:
        raise errors[0]
    return seconds, sum(acked)


def child(out: Connection, port: int, messages: list[bytes], chunks: list[str], window: int,
          connections: int) -> None:
    """Process entry point: replay, then send ``("ok", seconds, acked)`` or ``("error", text)``."""
    try:
        seconds, acked = replay(port, messages, chunks, window, connections)
    except Exception as exc:
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        out.send(("ok", seconds, acked))
    finally:
        out.close()
