"""Fixtures for the interop tests: the Node peer, and the server fixtures of tests/server.

The peers are real client implementations started over loopback. A missing
peer is a failure, not a skip: CI installs them (``npm ci --prefix
tests/interop``; ``fluent-logger`` is in the ``test`` extra).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ..server.conftest import Collect, read_for, start_server, tls_files  # noqa: F401  (tls_files is a fixture)

HERE = Path(__file__).resolve().parent
PEER = HERE / "peer.js"

#: A Node peer that has not answered in this long is stuck; the tests fail instead of hanging.
NODE_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with @fluent-org/logger installed next to peer.js."""
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is not installed: the Node Forward peer cannot run (install Node.js >= 18)")
    if not (HERE / "node_modules" / "@fluent-org" / "logger" / "package.json").is_file():
        pytest.fail("@fluent-org/logger is not installed: run `npm ci --prefix tests/interop`")
    return binary


async def run_peer(node: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run peer.js with ``config`` and return the JSON it printed."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(PEER),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(config).encode()), NODE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"node peer did not finish in {NODE_TIMEOUT} s") from None
    assert proc.returncode == 0, f"node peer failed ({proc.returncode}): {err.decode()[-2000:]}"
    lines = out.decode().strip().splitlines()
    assert lines, f"node peer printed nothing; stderr: {err.decode()[-2000:]}"
    return json.loads(lines[-1])
