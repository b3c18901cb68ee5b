"""The assembled receiver (``qwen_fluent.app.Receiver``) on loopback, in a thread, for end-to-end tests.

It is what ``qwen-fluent serve`` runs: the Forward server, the normaliser, the
metrics and the /metrics endpoint, with free ports. The app's own GPU
collector is off: it would load the real pynvml, and there is no GPU here. A
test that needs GPU gauges passes ``nvml`` (``tests.support.fake_nvml.FakeNvml()``)
and gets a collector reading it, registered on the receiver's registry. The
event loop runs in its own thread so that a test can talk to it with blocking
sockets and HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

#: Seconds to start or stop the receiver.
TIMEOUT = 30.0


class ReceiverThread:
    """Start with :meth:`start` (or ``with``); ``forward_port`` and ``metrics_port`` are then bound.

    ``flags`` override the configuration as command-line flags do. ``nvml``,
    when given, is the NVML module a GPU collector reads (without per-process
    attribution, which needs the GPU processes' /proc); ``gpu`` is then that
    collector, started before the receiver and closed after it.
    """

    def __init__(self, flags: dict[str, Any] | None = None, *, nvml: Any = None) -> None:
        from qwen_fluent.config import load

        base = {"host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0, "no_gpu": True}
        self.config = load(None, {**base, **(flags or {})}, environ={})
        self.nvml = nvml
        self.receiver: Any = None
        self.gpu: Any = None
        self.forward_port = 0
        self.metrics_port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)

    def _run(self) -> None:
        from qwen_fluent.app import Receiver

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.receiver = Receiver(self.config)
            if self.nvml is not None:
                from qwen_fluent.gpu import GpuConfig

                self.gpu = GpuConfig(process_attribution=False).collector(
                    self.config.metrics.namespace, nvml=self.nvml)
            try:
                if self.gpu is not None:
                    self.gpu.start()
                    self.receiver.registry.register(self.gpu)
                await self.receiver.start()
                self.forward_port = self.receiver.forward.port
                self.metrics_port = self.receiver.http.port
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    await self.receiver.stop()
            finally:
                if self.gpu is not None:
                    self.gpu.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()

    def start(self) -> ReceiverThread:
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("receiver did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the receiver's event loop (the thread that owns the metrics)."""
        done = threading.Event()
        result: list[Any] = []

        def run() -> None:
            try:
                result.append(fn(*args))
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        if not done.wait(TIMEOUT):
            raise RuntimeError("event loop did not run the call")
        return result[0] if result else None

    def stop(self) -> None:
        if self._thread.is_alive() and self._error is None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(TIMEOUT)

    def __enter__(self) -> ReceiverThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
