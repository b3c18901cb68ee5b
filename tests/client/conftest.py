"""Fixtures for the Forward client tests: the real receiver on loopback, /metrics read over HTTP, TLS files."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.certs import make_ca, make_leaf
from tests.support.receiver import ReceiverThread
from tests.support.truth import parse_text


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample the receiver's /metrics serves now, read with prometheus-client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse_text(response.read())


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def receiver_from_toml(tmp_path: Path, toml: str) -> ReceiverThread:
    """A receiver (not started) configured by a TOML file with ``toml`` in it, on free loopback ports."""
    from qwen_fluent.config import load

    path = tmp_path / "qwen-fluent.toml"
    path.write_text(toml)
    r = ReceiverThread({})
    r.config = load(path, {"host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0},
                    environ={})
    if r.config.gpu is not None:
        r.config.gpu.enabled = False
    return r


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[ReceiverThread]:
    """The assembled receiver (what ``qwen-fluent serve`` runs); flags from ``@pytest.mark.receiver_flags``."""
    marker = request.node.get_closest_marker("receiver_flags")
    flags: dict[str, Any] = marker.args[0] if marker else {}
    with ReceiverThread(flags) as r:
        yield r


def wait_total(port: int, name: str, want: float, timeout: float = 10.0, **labels: str) -> float:
    """``total(...)`` once it reaches ``want`` (or after ``timeout``). The receiver counts an ack just
    after writing it, so a client can hold its last ack a moment before /metrics shows it."""
    deadline = time.monotonic() + timeout
    while True:
        got = total(scrape(port), name, **labels)
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and a second CA that signed nothing."""
    d = tmp_path_factory.mktemp("client-tls")
    ca = make_ca(d)
    make_leaf(d, "server", "localhost", "serverAuth", ca)
    make_ca(d, "other")
    return d


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "receiver_flags(flags): configuration flags for the receiver fixture")
