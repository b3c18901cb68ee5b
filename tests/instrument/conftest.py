"""Fixtures: the fake OpenAI server served by uvicorn, with and without the middleware, and its log file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_fluent.instrument import RequestLogMiddleware
from tests.instrument.openai_app import Served, make_app

#: The line is written just after the last byte leaves; the client may see that byte first.
LINE_WAIT_S = 10.0


class LogFile:
    """The middleware's file output, read as the lines arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def next(self, count: int = 1) -> list[dict[str, Any]]:
        """The next ``count`` lines written since the last call; fails after LINE_WAIT_S."""
        deadline = time.monotonic() + LINE_WAIT_S
        while True:
            lines = self.lines()
            if len(lines) >= self.seen + count:
                new = lines[self.seen:self.seen + count]
                self.seen += count
                return new
            assert time.monotonic() < deadline, f"expected {count} new line(s), file has {lines[self.seen:]}"
            time.sleep(0.01)

    def one(self) -> dict[str, Any]:
        return self.next(1)[0]

    def assert_no_more(self, wait_s: float = 0.3) -> None:
        time.sleep(wait_s)
        assert self.lines()[self.seen:] == []


@pytest.fixture
def log(tmp_path: Path) -> LogFile:
    return LogFile(tmp_path / "requests.log")


@pytest.fixture
def serve(log: LogFile) -> Iterator[Callable[..., httpx.Client]]:
    """``serve(**middleware_options)`` -> an httpx client of the fake server wrapped by the middleware."""
    stack: list[tuple[Served, httpx.Client]] = []

    def start(wrap: bool = True, **options: Any) -> httpx.Client:
        options.setdefault("output", str(log.path))
        options.setdefault("gpu_memory", "off")
        options.setdefault("environ", {})
        app = RequestLogMiddleware(make_app(), **options) if wrap else make_app()
        served = Served(app).__enter__()
        client = httpx.Client(base_url=served.url, timeout=30)
        stack.append((served, client))
        return client

    yield start
    for served, client in stack:
        client.close()
        served.__exit__(None, None, None)
