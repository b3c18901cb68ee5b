"""Assemble and run the receiver: Forward listener -> records -> metrics -> /metrics.

This is the one place that knows all the pieces; each piece knows only its
neighbours' types. :func:`run` is what ``qwen-fluent serve`` calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import time
from typing import Callable

from . import __version__
from .config import AppConfig
from .forward import Message
from .server import ForwardServer
from .stats import ReceiverStats

log = logging.getLogger("qwen_fluent")

#: How often series of pods that went quiet are looked at for expiry. The
#: expiry itself is configured in [metrics]; a minute is fine-grained enough
#: for an idle time measured in minutes or hours.
EXPIRY_INTERVAL = 60.0


#: Allocations between two young-generation garbage collections. Python's
#: default (700) makes every 1000-record Forward message trigger several
#: collections, although decoded records are plain dicts and lists that
#: reference counting frees at once (no cycles). 100k measured 7 % faster end
#: to end (bench/bench_pipeline.py) and only delays the collection of real
#: cycles, which the receiver rarely makes.
GC_GEN0_THRESHOLD = 100_000


def tune_gc() -> None:
    """Collect cycles less often, and never scan the objects that live for the whole run."""
    gc.collect()
    gc.freeze()  # startup objects (modules, config) move to a generation GC no longer scans
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _fan_out(sinks: list[Callable[[Message], None]]) -> Callable[[Message], None]:
    if len(sinks) == 1:
        return sinks[0]

    def sink(message: Message) -> None:
        for s in sinks:
            s(message)

    return sink


class Receiver:
    """The running receiver; :meth:`start` and :meth:`stop` bracket its life."""

    def __init__(self, config: AppConfig, *, worker: bool = False) -> None:
        """``worker``: one of ``serve --workers N``: no /metrics and no GPU of its own (the parent
        serves both), and the Forward port shared with the other workers (SO_REUSEPORT)."""
        from .metrics import LLMMetrics, ReceiverCollector
        from .metrics.exposition import Registry
        from .pipeline import MetricsSink
        from .records import Normaliser
        from .server.http import MetricsHTTPServer
        from .stdout import StdoutSink

        self.config = config
        self.stats = ReceiverStats()
        self.registry = Registry()
        self.metrics = LLMMetrics(config.metrics)
        self.registry.register(self.metrics)
        self.registry.register(ReceiverCollector(self.stats))
        limits = config.server.limits
        sinks: list[Callable[[Message], None]] = [
            MetricsSink(Normaliser(config.records), self.metrics, self.stats, limits)]
        if config.stdout:
            sinks.append(StdoutSink())
        self.gpu = None
        if config.gpu is not None and config.gpu.enabled and not worker:
            self.gpu = config.gpu.collector(config.metrics.namespace)
            self.registry.register(self.gpu)
        # The metrics sink decodes packed payloads on its typed fast path; the
        # stdout sink needs every record decoded, so with it the connection decodes.
        server = dataclasses.replace(config.server, reuse_port=True) if worker else config.server
        self.forward = ForwardServer(server, _fan_out(sinks), self.stats, defer_packed=not config.stdout)
        self.http = None if worker else MetricsHTTPServer(config.http.host, config.http.port, self.registry,
                                                          ready=self.ready)
        self._expiry: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        """Ready once the Forward listener is bound, and until shutdown starts."""
        return self.forward.listening

    async def start(self) -> None:
        if self.gpu is not None:
            # nvmlInit can block for seconds on a busy node: keep it off the event loop.
            await asyncio.to_thread(self.gpu.start)
        if self.http is not None:
            self.http.start()
            log.info("serving /metrics on http://%s:%d", self.config.http.host, self.http.port)
        try:
            await self.forward.start()
        except BaseException:
            if self.http is not None:
                self.http.stop()
            if self.gpu is not None:
                self.gpu.close()
            raise
        self._expiry = asyncio.create_task(self._expire_loop())
        log.info("qwen-fluent %s ready", __version__)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            with self.metrics.lock:  # a scrape copies whole states, never one mid-expiry
                self.metrics.expire(time.time())

    async def stop(self) -> None:
        log.info("shutting down: no new connections; finishing messages in flight")
        if self._expiry is not None:
            self._expiry.cancel()
        await self.forward.stop()
        if self.http is not None:
            self.http.stop()
        if self.gpu is not None:
            self.gpu.close()
        log.info("stopped")


async def run(config: AppConfig, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Returns the process exit code."""
    receiver = Receiver(config)
    await receiver.start()
    tune_gc()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    await stop.wait()
    await receiver.stop()
    return 0
