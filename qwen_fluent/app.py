"""Assemble and run the receiver: Forward listener -> records -> metrics -> /metrics.

This is the one place that knows all the pieces; each piece knows only its
neighbours' types. :func:`run` is what ``qwen-fluent serve`` calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import logging
import os
import signal
import ssl
import stat
import time
from typing import Any, Callable

from . import __version__
from .config import AppConfig, Source, setters
from .forward import Message
from .forward.scan import DISABLE_ENV
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


class ListenError(OSError):
    """A listener could not be bound. The message names the listener, its address and port, and the
    flag, variable or file key that chose them (so the user knows what to change).

    Raised where each listener is started (:meth:`Receiver.start`, :func:`start_metrics`), from the
    errno of the failed bind, never from its text: asyncio's text for a taken port is
    ``error while attempting to bind on address ('0.0.0.0', 24224): address already in use``.
    An ``OSError`` subclass, so code that handles bind failures as ``OSError`` (a worker
    reporting to its parent) keeps working and passes this message on as ``strerror``.
    """

    def __init__(self, cause: OSError, message: str) -> None:
        super().__init__(cause.errno, message)
        self.cause = cause

    def __str__(self) -> str:
        return str(self.strerror)


def _setting(config: AppConfig, section: str, key: str) -> str:
    """How a message tells the user to change ``[section] key``: where it was set, or every way to set it."""
    source = config.source(section, key)
    if source.kind == "default":
        return f"set another with {setters(section, key)}"
    return f"it was set by {source}"


def _listen_message(cause: OSError, config: AppConfig, listener: str, section: str,
                    host: str, port: int) -> str:
    """The one line for a TCP listener that could not bind ``host:port`` (``section`` holds its keys)."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    code = cause.errno
    if code is None and str(cause).startswith("could not bind on any address"):
        # Python 3.13's create_server skips an address that fails with EADDRNOTAVAIL (gh-90871: so
        # that a host without IPv6 still binds its IPv4 addresses) and, when none is left, raises
        # this errno-less OSError: the only way to get it is an address this machine does not have.
        code = errno.EADDRNOTAVAIL
    if code == errno.EADDRINUSE:
        return (f"{listener} port {port} on {host} is already in use by another program; "
                f"{_setting(config, section, 'port')}")
    if code == errno.EADDRNOTAVAIL:
        return (f"cannot listen for {listener} on {where}: {host} is not an address of this machine; "
                f"{_setting(config, section, 'host')}")
    if code == errno.EACCES and 0 < port < 1024:
        return (f"cannot listen for {listener} on {where}: ports below 1024 need root or "
                f"CAP_NET_BIND_SERVICE; {_setting(config, section, 'port')}")
    return f"cannot listen for {listener} on {where}: {os.strerror(code) if code else cause}"


def _unix_socket_failed(cause: OSError, config: AppConfig) -> bool:
    """Whether the Forward server's failure was its Unix socket rather than its TCP port.

    :meth:`ForwardServer.start` binds TCP first, then the socket, and raises
    the bind's ``OSError`` either way; the errno and the path's state tell
    them apart: only a path fails with ENOENT/ENOTDIR/ENAMETOOLONG/EROFS/ELOOP;
    a path in use is one that exists and is not a socket (a stale socket is
    removed before binding); a permission error on a port of 1024 or more is the path's.
    """
    path = config.server.unix_socket
    if not path:
        return False
    code = cause.errno
    if code in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EROFS, errno.ELOOP):
        return True
    if code == errno.EADDRINUSE:
        try:
            return not stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError:
            return False
    if code == errno.EACCES:
        return not (0 < config.server.port < 1024)
    return False


def forward_listen_error(cause: OSError, config: AppConfig) -> ListenError:
    """The :class:`ListenError` for a Forward listener that could not bind."""
    if _unix_socket_failed(cause, config):
        path = config.server.unix_socket
        reason = ("the path exists and is not a socket" if cause.errno == errno.EADDRINUSE
                  else os.strerror(cause.errno or 0))
        source: Source = config.source("server", "unix_socket")
        return ListenError(cause, f"cannot listen for Forward on Unix socket {path}: {reason}; "
                                  f"it was set by {source}")
    return ListenError(cause, _listen_message(cause, config, "Forward", "server",
                                              config.server.host, config.server.port))


def start_metrics(http: Any, config: AppConfig) -> None:
    """Start the /metrics listener; a bind failure raises :class:`ListenError` naming its port and setting."""
    try:
        http.start()
    except OSError as exc:
        raise ListenError(exc, _listen_message(exc, config, "metrics", "http",
                                               config.http.host, config.http.port)) from exc


def _http_input(config: AppConfig, sink: Callable[[Message], None], stats: ReceiverStats,
                worker: bool) -> Any:
    """The HTTP input's server for ``[http_input]``, or ``None`` when it is off."""
    section = config.http_input
    if section is None:
        return None
    from .server.http_input import HTTPInputConfig, HTTPInputServer, HTTPLimits

    server, limits = config.server, config.server.limits
    tls = section.tls and server.tls_cert is not None
    http_limits = HTTPLimits(
        max_body_bytes=section.max_body_bytes, max_decompressed_bytes=limits.max_decompressed_bytes,
        max_header_bytes=section.max_header_bytes, max_inflight_bytes=section.max_inflight_bytes,
        max_connections=limits.max_connections, max_connections_per_address=section.max_connections_per_address,
        idle_timeout=section.idle_timeout, request_timeout=section.request_timeout)
    http_config = HTTPInputConfig(
        host=section.host, port=section.port,
        tls_cert=server.tls_cert if tls else None, tls_key=server.tls_key if tls else None,
        tls_client_ca=server.tls_client_ca if tls else None,
        secret=section.secret or None, username=section.username or None, default_tag=section.default_tag,
        tag_header=section.tag_header or None, date_key=section.date_key or None, limits=http_limits,
        decode_limits=limits, shutdown_grace=server.shutdown_grace, reuse_port=worker)
    return HTTPInputServer(http_config, sink, stats, defer_packed=not config.stdout)


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
        from .reliability import Reliability, ReliabilityConfig
        from .server.http import MetricsHTTPServer
        from .stdout import StdoutSink

        self.config = config
        self.stats = ReceiverStats()
        self.registry = Registry()
        self.metrics = LLMMetrics(config.metrics)
        self.registry.register(self.metrics)
        self.registry.register(ReceiverCollector(self.stats))
        # Duplicate window, checkpoints, shared store (docs/reliability.md). The checkpoint is restored
        # here, before any listener opens: what it holds is the base every new message adds to.
        self.reliability = Reliability(config.reliability or ReliabilityConfig(), self.metrics, self.stats)
        self.registry.register(self.reliability.collector)
        self.reliability.restore()
        limits = config.server.limits
        sink = MetricsSink(Normaliser(config.records), self.metrics, self.stats, limits)
        if not sink.scanning and not worker:
            log.warning("the C payload scanner is not in use (%s): PackedForward payloads are read on the "
                        "pure-Python path, with the same results at about 60 %% of the speed",
                        f"{DISABLE_ENV} is set" if os.environ.get(DISABLE_ENV) else
                        "not built: reinstall with a C compiler and the Python headers present")
        counted: list[Callable[[Message], None]] = [sink]
        self.audit = None
        if config.audit is not None and config.audit.sensitive:
            from .audit import AuditSink

            # Behind the same duplicate check as the metrics: a resent message is audited once (docs/audit.md).
            self.audit = AuditSink.from_config(config.audit, config.metrics, config.records, limits)
            self.registry.register(self.audit.metrics)
            counted.append(self.audit)
        sinks: list[Callable[[Message], None]] = [self.reliability.wrap(_fan_out(counted))]
        if config.stdout:
            # After the metrics path, and never a reason to withhold an ack: a failing write is logged
            # and counted by the sink itself (stdout_failed), so a resend cannot count the records twice.
            sinks.append(StdoutSink(stats=self.stats))
        self.gpu = None
        if config.gpu is not None and config.gpu.enabled and not worker:
            self.gpu = config.gpu.collector(config.metrics.namespace)
            self.registry.register(self.gpu)
        # The metrics sink decodes packed payloads on its typed fast path; the stdout
        # sink needs every record decoded, so with it the connection decodes. (The audit
        # sink decodes a deferred payload itself: 2.3x cheaper than this, docs/audit.md.)
        server = dataclasses.replace(config.server, reuse_port=True) if worker else config.server
        if config.stdin.enabled and config.source("server", "port").kind == "default":
            server = dataclasses.replace(server, port=None)  # --stdin alone opens no Forward port
        checkpointer = self.reliability.checkpointer
        # With a state directory an ack promises a checkpoint on disk (docs/reliability.md).
        durable = checkpointer.durable if checkpointer is not None and self.reliability.config.ack_after_checkpoint \
            else None
        self.forward = ForwardServer(server, _fan_out(sinks), self.stats, defer_packed=not config.stdout,
                                     durable=durable)
        # The other inputs feed the same sink on the same loop, so they count exactly as Forward does.
        self.http_input = _http_input(config, self.forward.sink, self.stats, worker)
        self.stdin = None
        if config.stdin.enabled:
            from .server.stdin import StdinInput

            self.stdin = StdinInput(self.forward.sink, self.stats, tag=config.stdin.tag)
        self._running = False
        self.http = None if worker else MetricsHTTPServer(config.http.host, config.http.port, self.registry,
                                                          ready=self.ready,
                                                          web_config_file=config.http.web_config_file or None)
        self._expiry: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        """Ready once the listeners are bound (Forward's, when it has one), and until shutdown starts."""
        if self.forward.config.port is None and not self.forward.config.unix_socket:
            return self._running  # serve --stdin alone
        return self.forward.listening

    async def start(self) -> None:
        if self.gpu is not None:
            # nvmlInit can block for seconds on a busy node: keep it off the event loop.
            await asyncio.to_thread(self.gpu.start)
        try:
            if self.http is not None:
                start_metrics(self.http, self.config)
                log.info("serving /metrics on %s://%s:%d", self.http.scheme, self.config.http.host, self.http.port)
            try:
                await self.forward.start()
            except ssl.SSLError:
                raise  # the certificate or key, not the address: the CLI says so
            except OSError as exc:
                raise forward_listen_error(exc, self.config) from exc
            if self.http_input is not None:
                try:
                    await self.http_input.start()
                except ssl.SSLError:
                    raise
                except OSError as exc:
                    await self.forward.stop(grace=0)
                    raise ListenError(exc, _listen_message(exc, self.config, "the HTTP input", "http_input",
                                                           self.http_input.config.host,
                                                           self.http_input.config.port)) from exc
        except BaseException:
            if self.http is not None:
                self.http.stop()
            if self.gpu is not None:
                self.gpu.close()
            raise
        self._expiry = asyncio.create_task(self._expire_loop())
        self.reliability.start()
        if self.stdin is not None:
            self.stdin.start()
        self._running = True
        if self.audit is not None:
            log.info("sensitive-data audit on: %s_sensitive_records_total counts records by kind and pod "
                     "(never the text)", self.audit.metrics.namespace)
        log.info("qwen-fluent %s ready", __version__)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            with self.metrics.lock:  # a scrape copies whole states, never one mid-expiry
                self.metrics.expire(time.time())

    async def stop(self) -> None:
        log.info("shutting down: no new connections; finishing messages in flight")
        self._running = False
        if self._expiry is not None:
            self._expiry.cancel()
        if self.stdin is not None:
            await self.stdin.stop()
        # Both inputs drain at once, so SIGTERM is done within one shutdown_grace, not one per input. The
        # Forward server's acks that wait for a checkpoint are resolved by the group commit meanwhile.
        stops = [self.forward.stop()]
        if self.http_input is not None:
            stops.append(self.http_input.stop())
        await asyncio.gather(*stops)
        await self.reliability.stop()  # the last checkpoint, after the last ack
        if self.http is not None:
            self.http.stop()
        if self.gpu is not None:
            self.gpu.close()
        log.info("stopped")


async def run(config: AppConfig, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Returns the process exit code."""
    receiver = Receiver(config)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before start(): /metrics and the listeners answer from inside it, so a SIGTERM sent as soon as they
    # do (Kubernetes, a test) must already stop the receiver the graceful way (acks, last checkpoint),
    # not kill it by the default action. One that comes during start-up stops it right after.
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    await receiver.start()
    tune_gc()
    waits = [asyncio.ensure_future(stop.wait())]
    if receiver.stdin is not None and not config.stdin.linger:
        waits.append(asyncio.ensure_future(receiver.stdin.finished.wait()))  # serve --stdin ends with its input
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await receiver.stop()
    return 0
