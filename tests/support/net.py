"""Loopback helpers the process-level tests share."""

from __future__ import annotations

import socket
import time
import urllib.request


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (a test binds it soon after; CI runs each Python in
    its own network namespace, so versions never race for one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float = 15.0, interval: float = 0.1) -> bytes:
    """The body of ``url`` once it answers 2xx, retried every ``interval`` while the server starts (a
    refused connection or an error status); the last error after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)
