"""Loopback helpers the process-level tests share."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (a test binds it soon after; CI runs each Python in
    its own network namespace, so versions never race for one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
