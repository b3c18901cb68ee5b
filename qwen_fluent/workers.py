"""``qwen-fluent serve --workers N``: N receiver processes on one Forward port, one /metrics for all.

One Python process decodes and aggregates on one core. With ``--workers N``
the parent starts N worker processes (``spawn``: no state is inherited, no
threads are forked); each runs the Forward listener with SO_REUSEPORT on the
same port, so the kernel spreads connections over them, and keeps its own
metrics. The parent serves /metrics (and the GPU gauges, read once per node):
at each scrape it asks every worker for a snapshot over a pipe and exposes
their merge (:mod:`qwen_fluent.metrics.merge`: counters and buckets summed,
gauges by their own rule), so Prometheus sees one receiver.

A connection stays on the worker that accepted it, so one Fluent Bit sending
over one connection is served by one core; a node's Fluent Bit opens one
connection per output worker (``workers`` in its forward output), a central
receiver one per node. Bounds: at most :data:`MAX_WORKERS`; a snapshot is
waited for :data:`SNAPSHOT_TIMEOUT` seconds, and a worker that does not
answer is left out of that scrape (logged) and makes ``/readyz`` fail until
it answers again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal
import socket
import threading
from multiprocessing.connection import Connection
from typing import Any

from .app import Receiver, start_metrics, tune_gc
from .config import AppConfig
from .metrics import LLMMetrics, ReceiverCollector
from .metrics.exposition import Registry, Writer
from .metrics.merge import BlockCache, for_sending, merge
from .server.http import MetricsHTTPServer
from .stats import ReceiverStats

log = logging.getLogger("qwen_fluent.workers")

#: Most worker processes. One per core is the useful maximum; 256 leaves room
#: for the largest nodes while bounding the pipes and snapshots a scrape gathers.
MAX_WORKERS = 256
#: Seconds a scrape waits for one worker's snapshot (Prometheus' default
#: scrape timeout is 10 s; a snapshot at the cap is a few MB).
SNAPSHOT_TIMEOUT = 5.0
#: Seconds the parent waits for the workers to bind their listeners.
START_TIMEOUT = 30.0


class WorkerError(Exception):
    """A worker could not start (its listener failed, or it died)."""


# -- the worker process -------------------------------------------------------------


def _worker_main(config: AppConfig, index: int, conn: Connection) -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        asyncio.run(_serve_worker(config, conn))
    except OSError as exc:
        conn.send(("error", f"{exc.strerror or exc}"))


async def _serve_worker(config: AppConfig, conn: Connection) -> None:
    receiver = Receiver(config, worker=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # before the listener opens, as app.run does
    await receiver.start()
    tune_gc()

    def answer() -> None:
        """The parent's requests, on a thread: a snapshot copies under the metrics lock, briefly."""
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                loop.call_soon_threadsafe(stop.set)
                return
            if request == "snapshot":
                stats = ReceiverStats()
                stats.add(receiver.stats)  # a copy; the loop thread keeps counting
                conn.send((for_sending(receiver.metrics.snapshot()), stats))
            elif request == "stop":
                loop.call_soon_threadsafe(stop.set)
                return

    conn.send(("ready", receiver.forward.port))
    threading.Thread(target=answer, name="qwen-fluent-worker-pipe", daemon=True).start()
    await stop.wait()
    await receiver.stop()


# -- the parent -------------------------------------------------------------------


@dataclasses.dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    answering: bool = True

    def snapshot(self) -> Any:
        with self.lock:
            try:
                self.conn.send("snapshot")
                if not self.conn.poll(SNAPSHOT_TIMEOUT):
                    raise TimeoutError(f"no snapshot within {SNAPSHOT_TIMEOUT:g} s")
                reply = self.conn.recv()
            except (OSError, EOFError, TimeoutError) as exc:
                if self.answering:
                    log.warning("worker %d left out of this scrape: %s", self.index, exc)
                self.answering = False
                return None
            self.answering = True
            return reply


class MergedCollector:
    """Exposes the merge of every worker's metrics and receiver counters, as one receiver would."""

    def __init__(self, config: AppConfig, workers: list[_Worker]) -> None:
        self.workers = workers
        self.template = LLMMetrics(config.metrics)  # never observes: it only exposes merges
        self._blocks = BlockCache()
        self._lock = threading.Lock()

    def _gather(self) -> tuple[Any, ReceiverStats]:
        replies = [r for r in (w.snapshot() for w in self.workers) if r is not None]
        stats = ReceiverStats()
        for _, worker_stats in replies:
            stats.add(worker_stats)
        return merge(self.template, [snap for snap, _ in replies]), stats

    def expose(self, writer: Writer) -> None:
        with self._lock:  # one scrape at a time keeps the block cache consistent
            snap, stats = self._gather()
            self._blocks.fill(snap)
            self.template.expose_snapshot(writer, snap)
            self._blocks.keep(snap)
        for family in ReceiverCollector(stats).collect():
            writer.metric(family)

    def collect(self) -> Any:
        snap, stats = self._gather()
        yield from self.template.families(snap)
        yield from ReceiverCollector(stats).collect()

    def describe(self) -> Any:
        yield from self.template.describe()
        yield from ReceiverCollector(ReceiverStats()).describe()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_workers(config: AppConfig, stop: threading.Event | None = None) -> int:
    """Run ``config.workers`` workers and the merged /metrics until SIGTERM/SIGINT (or ``stop``)."""
    n = config.workers
    if config.server.port == 0:  # every worker must bind the same port
        config = dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                         port=_free_port(config.server.host)))
    ctx = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    stop = stop or threading.Event()
    try:
        for i in range(n):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker_main, args=(config, i, child), name=f"qwen-fluent-worker-{i}",
                                  daemon=True)
            process.start()
            child.close()
            workers.append(_Worker(i, process, parent))
        for w in workers:
            if not w.conn.poll(START_TIMEOUT):
                raise WorkerError(f"worker {w.index} did not start within {START_TIMEOUT:g} s")
            try:
                status, detail = w.conn.recv()
            except EOFError:
                raise WorkerError(f"worker {w.index} exited while starting (see its log above)") from None
            if status != "ready":
                raise WorkerError(f"worker {w.index}: {detail}")
        log.info("%d workers listening for Forward on port %d", n, config.server.port)

        registry = Registry()
        registry.register(MergedCollector(config, workers))
        gpu = None
        if config.gpu is not None and config.gpu.enabled:
            gpu = config.gpu.collector(config.metrics.namespace)
            gpu.start()
            registry.register(gpu)
        http = MetricsHTTPServer(config.http.host, config.http.port, registry,
                                 web_config_file=config.http.web_config_file or None,
                                 ready=lambda: all(w.process.is_alive() and w.answering for w in workers))
        start_metrics(http, config)  # a taken port fails with the message that names it and its setting
        log.info("serving /metrics on %s://%s:%d (merged from %d workers)", http.scheme, config.http.host, http.port, n)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                dead = [w.index for w in workers if not w.process.is_alive()]
                if dead:
                    log.error("worker(s) %s died; stopping", dead)
                    return 1
        finally:
            http.stop()
            if gpu is not None:
                gpu.close()
        return 0
    finally:
        _stop_workers(workers, config.server.shutdown_grace)


def _stop_workers(workers: list[_Worker], grace: float) -> None:
    for w in workers:
        try:
            with w.lock:
                w.conn.send("stop")
        except OSError:
            pass
    for w in workers:
        w.process.join(grace + 5.0)
        if w.process.is_alive():
            log.warning("worker %d did not stop within %g s; terminating it", w.index, grace + 5.0)
            w.process.terminate()
            w.process.join(5.0)
