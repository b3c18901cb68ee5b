"""Fixtures for running the real asyncio Forward server on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qwen_fluent.forward import Message
from qwen_fluent.server import ForwardServer, ServerConfig
from qwen_fluent.stats import ReceiverStats

from .certs import make_ca, make_leaf


class Collect:
    """A sink that keeps what it was given, and can be told to fail."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.fail = False

    def __call__(self, message: Message) -> None:
        if self.fail:
            raise RuntimeError("sink told to fail")
        self.messages.append(message)

    @property
    def records(self) -> list[dict]:
        return [e.record for m in self.messages for e in m.entries]


async def start_server(**kwargs) -> tuple[ForwardServer, Collect]:
    sink = Collect()
    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("port", 0)
    server = ForwardServer(ServerConfig(**kwargs), sink, ReceiverStats())
    await server.start()
    return server, sink


async def read_for(reader: asyncio.StreamReader, seconds: float = 2.0) -> bytes:
    """Everything the server sends until it closes (or ``seconds`` pass)."""
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), seconds)
            if not chunk:
                return out
            out += chunk
    except asyncio.TimeoutError:
        return out


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    Keys ``ca_crt``, ``ca_key``, ``server_crt``, ``server_key``, ``client_crt``,
    ``client_key``. Made to pass a strict X.509 verifier (``tests/server/certs.py``).
    """
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d)
    make_leaf(d, "server", "localhost", "serverAuth", ca)
    make_leaf(d, "client", "fluent-bit", "clientAuth", ca)
    return {p.stem + "_" + p.suffix[1:]: p for p in d.iterdir() if p.suffix in (".crt", ".key")}
