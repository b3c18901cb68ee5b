"""Fixtures for running the real asyncio Forward server on loopback."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from qwen_fluent.forward import Message
from qwen_fluent.server import ForwardServer, ServerConfig
from qwen_fluent.stats import ReceiverStats


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
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, made by openssl."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=qwen-fluent test CA")
    for name, cn in (("server", "localhost"), ("client", "fluent-bit")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {p.stem + "_" + p.suffix[1:]: p for p in d.iterdir()}
