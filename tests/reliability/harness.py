"""Real peers for the exactly-once tests: a ``qwen-fluent serve`` process, a ``redis-server``, a scrape parser."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.support.net import free_port, wait_http

QWEN = [sys.executable, "-m", "qwen_fluent"]

#: Samples that describe the process or the moment, not what was counted: left out when two
#: scrapes are compared across a restart.
VOLATILE = ("process_start_time_seconds", "qwen_fluent_connections_active", "qwen_fluent_checkpoint",
            "qwen_fluent_build_info")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str, volatile: tuple[str, ...] = VOLATILE) -> Samples:
    """Every sample of a text exposition by (name, labels); ``_created`` and ``volatile`` names left out."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created") or s.name.startswith(volatile):
                continue
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_samples: Samples, name: str, **labels: str) -> float:
    return all_samples.get((name, frozenset(labels.items())), 0.0)


def total(all_samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in all_samples.items() if n == name)


class Serve:
    """``qwen-fluent serve`` on loopback with free ports and the given extra flags; stopped by signal."""

    def __init__(self, *flags: str, forward_port: int | None = None, stdout: int = subprocess.DEVNULL) -> None:
        """``stdout``: where the process's stdout goes (``subprocess.PIPE``: :attr:`proc` ``.stdout``)."""
        self.stdout = stdout
        self.forward_port = forward_port or free_port()
        self.metrics_port = free_port()
        self.flags = list(flags)
        self.proc: subprocess.Popen[str] | None = None
        self.log = tempfile.TemporaryFile("w+")

    def start(self) -> Serve:
        self.proc = subprocess.Popen(
            QWEN + ["serve", "--host", "127.0.0.1", "--port", str(self.forward_port), "--metrics-host", "127.0.0.1",
                    "--metrics-port", str(self.metrics_port), "--no-gpu", *self.flags],
            stdout=self.stdout, stderr=self.log, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.stderr()}")
            try:
                wait_http(f"http://127.0.0.1:{self.metrics_port}/readyz", 0.5, interval=0.05)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def scrape(self) -> Samples:
        return samples(wait_http(f"http://127.0.0.1:{self.metrics_port}/metrics", 20.0, interval=0.05).decode())

    def settled(self) -> Samples:
        """A scrape once two in a row agree: the server bumps some counters (acks) just after the write
        that a client returns on, and /metrics is served from another thread."""
        last = self.scrape()
        while True:
            time.sleep(0.1)
            now = self.scrape()
            if now == last:
                return now
            last = now

    def scrape_all(self) -> Samples:
        """Every sample, the volatile ones included."""
        return samples(wait_http(f"http://127.0.0.1:{self.metrics_port}/metrics", 20.0, interval=0.05).decode(), ())

    def raw(self) -> str:
        return wait_http(f"http://127.0.0.1:{self.metrics_port}/metrics", 20.0, interval=0.05).decode()

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Serve:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, no persistence, in a temporary directory."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="qf-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert self.binary, "redis-server is not installed (scripts/install-peers installs it)"
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
