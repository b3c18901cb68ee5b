"""The pieces of the hostile-peer suite: a real receiver process, a good client, and its measurements.

:class:`ReceiverProcess` runs ``python -m qwen_fluent serve`` on loopback
(free ports, no GPU), so that its memory is its own: the peak resident set
(``VmHWM`` in ``/proc/<pid>/status``, the kernel's own high-water mark) is
what one attack cost, start-up included. :class:`GoodClient` is a Forward
client on 127.0.0.1 that streams acked chunks of request logs, one at a time,
and records how long each ack took; attackers bind other 127.0.0.x source
addresses, so the per-address limit tells them apart as it would tell
machines apart. :func:`scrape` reads the receiver's own counters from
``/metrics``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack

from tests.support.net import free_port
from tests.support.truth import parse_text

REPO = Path(__file__).resolve().parents[2]
#: Seconds the receiver has to start; it takes about one on an idle machine.
START_TIMEOUT = 30.0
GOOD_SOURCE = "127.0.0.1"
#: The model of the good client's records; no attacker sends it, so its count is the good client's alone.
GOOD_MODEL = "qwen2.5-7b-good"


class ReceiverProcess:
    """``qwen-fluent serve`` in a child process, on loopback, with ``flags`` and an optional TOML ``config``."""

    def __init__(self, tmp: Path, flags: list[str] | None = None, config: str | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        args = [sys.executable, "-m", "qwen_fluent", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--metrics-host", "127.0.0.1", "--metrics-port", str(self.metrics_port), "--no-gpu",
                "--log-level", "warning", *(flags or [])]
        if config is not None:
            path = tmp / "receiver.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        self.log_path = tmp / "receiver.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_FLUENT_")}
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"receiver not ready within {START_TIMEOUT} s: {self.log()}")

    def status(self, field: str) -> int:
        """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def scrape(port: int) -> dict[Any, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return parse_text(reply.read())


def counter(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The value of one sample (0 when it is not there)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def request_log(i: int) -> dict[str, Any]:
    return {"request_id": f"good-{i}", "method": "POST", "path": "/v1/chat/completions", "model": GOOD_MODEL,
            "input_tokens": 100 + i % 7, "output_tokens": 20, "total_time_ms": 250, "queue_time_ms": 10,
            "inference_time_ms": 240, "status": "success"}


def ping(helo_bytes: bytes, key: str, hostname: str = "good-client") -> bytes:
    """The secure-forward PING answering ``helo_bytes`` (protocol v1: sha512(salt, hostname, nonce, key))."""
    helo = msgpack.unpackb(helo_bytes, raw=False, unicode_errors="surrogateescape")
    nonce = helo[1]["nonce"]
    nonce = nonce.encode("utf-8", "surrogateescape") if isinstance(nonce, str) else nonce
    salt = os.urandom(16)
    digest = hashlib.sha512(salt + hostname.encode() + nonce + key.encode()).hexdigest()
    return msgpack.packb(["PING", hostname, salt, digest, "", ""], use_bin_type=True)


class GoodClient(threading.Thread):
    """Streams chunks of ``per_chunk`` request logs with acks on one connection from 127.0.0.1.

    Each chunk waits for its ack before the next is sent (Fluent Bit's
    ``Require_ack_response``); ``latencies`` holds every ack's round trip and
    ``records`` the records acked. Any failure (the connection closed, an ack
    not within ``ack_timeout``) ends the thread with ``error`` set.
    """

    def __init__(self, port: int, key: str | None = None, tls: ssl.SSLContext | None = None,
                 per_chunk: int = 5, interval: float = 0.02, ack_timeout: float = 10.0) -> None:
        super().__init__(daemon=True, name="good-client")
        self.port, self.key, self.tls = port, key, tls
        self.per_chunk, self.interval, self.ack_timeout = per_chunk, interval, ack_timeout
        self.latencies: list[float] = []
        self.records = 0
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.ack_timeout,
                                            source_address=(GOOD_SOURCE, 0))
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname="localhost")
            with sock:
                if self.key is not None:
                    sock.sendall(ping(sock.recv(4096), self.key))
                    pong = msgpack.unpackb(sock.recv(4096), raw=False)
                    if pong[1] is not True:
                        raise RuntimeError(f"handshake refused: {pong}")
                self.ready.set()
                n = 0
                while not self._halt.is_set():
                    chunk = f"good-{n}"
                    entries = [[int(time.time()), request_log(n * self.per_chunk + i)] for i in range(self.per_chunk)]
                    start = time.perf_counter()
                    sock.sendall(msgpack.packb(["llm.good", entries, {"chunk": chunk}]))
                    reply = sock.recv(100)
                    if msgpack.unpackb(reply, raw=False) != {"ack": chunk}:
                        raise RuntimeError(f"unexpected reply {reply!r}")
                    self.latencies.append(time.perf_counter() - start)
                    self.records += self.per_chunk
                    n += 1
                    self._halt.wait(self.interval)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
