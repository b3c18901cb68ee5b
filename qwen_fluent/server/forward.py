"""The asyncio shell around the Forward protocol core.

It owns sockets, timers and nothing else: bytes go into a
:class:`~qwen_fluent.forward.ForwardConnection`, events come out, a
:class:`~qwen_fluent.forward.Message` goes to the sink, and only when the sink
returned does the ack go back. Every way a connection can end badly is counted
in :class:`~qwen_fluent.stats.ReceiverStats` by reason and logged once,
and ends that connection only.

The sink is a plain callable run on the event loop. The metrics sink does a few
dictionary operations per record, so a chunk of thousands of records takes
milliseconds; a sink that must block should hand work to a thread itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import ssl
import stat
from typing import Callable

from ..forward import (
    NEED_DATA,
    AuthConfig,
    AuthFailed,
    AuthSucceeded,
    EndOfStream,
    ForwardConnection,
    State,
    ForwardError,
    Heartbeat,
    Limits,
    Message,
    SkippedMessage,
)
from ..stats import ReceiverStats

log = logging.getLogger("qwen_fluent.server")

Sink = Callable[[Message], None]

#: ReceiverStats.errors reasons the server adds to the core's ForwardError reasons.
IDLE_TIMEOUT = "idle_timeout"
HANDSHAKE_TIMEOUT = "handshake_timeout"
SINK_FAILED = "sink_failed"
SHUTDOWN = "shutdown"


@dataclasses.dataclass
class ServerConfig:
    """Where to listen and how. ``port=0`` picks a free port (see :attr:`ForwardServer.port`)."""

    host: str = "0.0.0.0"
    #: 24224 is the Forward protocol's registered default (Fluentd, Fluent Bit).
    port: int = 24224
    #: Also (or only, with ``port=None``) listen on this Unix socket path.
    unix_socket: str | None = None
    #: PEM certificate chain and key: serve TLS on the TCP port (Fluent Bit ``tls on``).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: PEM CA bundle: require and verify client certificates (mutual TLS).
    tls_client_ca: str | None = None
    #: Shared-key (and optionally user) authentication; ``None`` accepts anyone.
    auth: AuthConfig | None = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    #: Seconds SIGTERM waits for connections to finish the message they are in
    #: the middle of. Fluent Bit's own ``Grace`` defaults to 5 s; 10 s covers
    #: a slow peer finishing a large chunk, and stays well inside Kubernetes'
    #: default 30 s termination grace period.
    shutdown_grace: float = 10.0
    #: Let other processes listen on the same port (SO_REUSEPORT): the kernel
    #: spreads new connections over them. ``serve --workers N`` sets it.
    reuse_port: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context, or ``None`` for plain TCP. Raises ``OSError``/``ssl.SSLError`` on bad files.

        Client certificates (``tls_client_ca``) are verified strictly on every
        Python version: ``VERIFY_X509_STRICT`` (a CA needs ``keyUsage``, its
        ``basicConstraints`` marked critical) and ``VERIFY_X509_PARTIAL_CHAIN``
        (any certificate in ``tls_client_ca`` is a trust anchor, an
        intermediate too). ``ssl.create_default_context`` sets both from
        Python 3.13 on and neither before, so without setting them here the
        same certificate would be accepted or refused depending on the
        interpreter. A handshake refused over a certificate is logged with
        OpenSSL's reason and what to change (:class:`_HandshakeLoggingSSLObject`).
        """
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca:
            context.load_verify_locations(cafile=self.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        context.sslobject_class = _HandshakeLoggingSSLObject
        return context


#: Where the TLS log lines send the reader.
TLS_DOCS = "docs/forward.md#tls"

#: What to change for the client-certificate failures a misconfigured CA or
#: client certificate produces, by OpenSSL ``X509_V_ERR_*`` code (stable across
#: OpenSSL versions). Any other code is logged with OpenSSL's own words.
_CLIENT_CERT_ADVICE: dict[int, str] = {
    92: "the CA certificate lacks keyUsage; regenerate the CA with keyUsage=critical,keyCertSign,cRLSign",
    32: "the CA certificate's keyUsage lacks keyCertSign; regenerate the CA with keyUsage=critical,keyCertSign,cRLSign",
    79: "a CA certificate is not a valid CA; regenerate it with basicConstraints=critical,CA:TRUE and "
        "keyUsage=critical,keyCertSign,cRLSign",
    89: "the CA certificate's basicConstraints is not critical; regenerate the CA with basicConstraints=critical,CA:TRUE",
    86: "the CA certificate lacks subjectKeyIdentifier; regenerate the CA with subjectKeyIdentifier=hash",
    85: "the client certificate lacks authorityKeyIdentifier; reissue it with authorityKeyIdentifier=keyid",
    26: "the client certificate is not for client authentication; reissue it with extendedKeyUsage=clientAuth",
    20: "the client certificate is not signed by a CA in tls_client_ca; add its CA to tls_client_ca or reissue it",
    2: "the client certificate is not signed by a CA in tls_client_ca; add its CA to tls_client_ca or reissue it",
    18: "the client certificate is self-signed; sign it with a CA that is in tls_client_ca",
    19: "the client's chain ends in a root that is not in tls_client_ca; add that root to tls_client_ca",
    10: "a certificate in the client's chain has expired; renew it",
    9: "a certificate in the client's chain is not valid yet; check the clocks of both machines",
}

#: TLS alerts by which a client says it refused this server's certificate.
_CLIENT_REFUSED_OURS = frozenset({
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
})


class _HandshakeLoggingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` that logs, once, why a TLS handshake was refused over a certificate.

    asyncio's TLS server drops a failed handshake silently: the protocol is
    never told of the connection, and the error reaches a log only with the
    event loop in debug mode. The handshake is the one place that sees
    OpenSSL's reason, so it is logged here, through ``SSLContext.sslobject_class``,
    the hook the standard library offers for this. asyncio gives no peer
    address at that point, so the line names the reason and the fix, not the
    client. Failures that are not about certificates (a plain-text client on
    the TLS port, a probe that connects and leaves) are logged at debug level.
    """

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # the handshake is waiting for bytes, not failing
        except ssl.SSLCertVerificationError as exc:
            advice = _CLIENT_CERT_ADVICE.get(exc.verify_code, "fix the client certificate or tls_client_ca")
            log.warning("TLS handshake refused: client certificate chain rejected (OpenSSL: %s): %s (see %s)",
                        exc.verify_message, advice, TLS_DOCS)
            raise
        except ssl.SSLError as exc:
            if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
                log.warning("TLS handshake refused: the client sent no certificate, which tls_client_ca requires; "
                            "give the client one signed by a CA in tls_client_ca (Fluent Bit: tls.crt_file and "
                            "tls.key_file) (see %s)", TLS_DOCS)
            elif exc.reason in _CLIENT_REFUSED_OURS:
                log.warning("TLS handshake refused by the client: it rejected this server's certificate (%s); "
                            "give the client the CA that signed tls_cert (Fluent Bit: tls.ca_file) and a name that "
                            "tls_cert covers (see %s)", exc.reason, TLS_DOCS)
            else:
                log.debug("TLS handshake failed: %s", exc)
            raise


class _ForwardProtocol(asyncio.Protocol):
    """One connection: feeds the core, runs the sink, writes acks, enforces timeouts."""

    def __init__(self, server: ForwardServer, transport_name: str) -> None:
        self.server = server
        self.transport_name = transport_name
        self.transport: asyncio.Transport | None = None
        self.conn = ForwardConnection(auth=server.config.auth, limits=server.config.limits,
                                      defer_packed=server.defer_packed)
        self.peer = "?"
        self.closing = False
        self._idle: asyncio.TimerHandle | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.reading_paused = False

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else (peer or "unix")
        stats = self.server.stats
        if len(self.server.connections) >= self.server.config.limits.max_connections or self.server.stopping:
            stats.connections_refused += 1
            log.warning("refusing connection from %s: %d connections open (limit)", self.peer, len(self.server.connections))
            transport.abort()
            return
        self.server.connections.add(self)
        stats.connections_opened[self.transport_name] += 1
        stats.connections_active += 1
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.server.config.limits.idle_timeout, self._on_idle)
        hello = self.conn.data_to_send()
        if hello:
            transport.write(hello)
            self._handshake_timer = loop.call_later(
                self.server.config.limits.handshake_timeout, self._on_handshake_timeout
            )

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.server.stats.bytes_received += len(data)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = asyncio.get_running_loop().call_later(self.server.config.limits.idle_timeout, self._on_idle)
        try:
            self.conn.receive_data(data)
        except ForwardError as exc:
            self._fail(exc.reason, str(exc))
            return
        self._process()

    def eof_received(self) -> bool:
        if not self.closing:
            self.conn.receive_data(b"")
            self._process()
        return False  # let asyncio close the transport

    def pause_writing(self) -> None:
        """The peer is not reading what we write (its acks): stop reading from it.

        asyncio calls this when the transport's write buffer passes its
        high-water mark (64 KiB by default). A client that sends chunks with
        ``chunk`` options but never reads the acks would otherwise make the
        acks pile up in memory without bound; once reading is paused, the
        buffer holds at most the mark plus the acks of one read.
        """
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_writing(self) -> None:
        if self.transport is not None and self.reading_paused and not self.closing:
            self.transport.resume_reading()
        self.reading_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._idle, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.server.stats.connections_active -= 1
            self.server.connection_closed()

    # -- the work --------------------------------------------------------------

    def _process(self) -> None:
        """Pull every complete event out of the core and act on it."""
        stats = self.server.stats
        transport = self.transport
        assert transport is not None
        conn = self.conn
        while not self.closing:
            try:
                event = conn.next_event()
            except ForwardError as exc:
                self._fail(exc.reason, str(exc))
                return
            if event is NEED_DATA:
                break
            if isinstance(event, Message):
                try:
                    self.server.sink(event)
                except ForwardError as exc:  # a deferred payload the sink's decoder refused
                    self._fail(exc.reason, str(exc))
                    return
                except Exception:
                    log.exception("sink failed on a message from %s; closing without ack so it is resent", self.peer)
                    self._fail(SINK_FAILED, "sink raised")
                    return
                stats.messages[event.mode.value] += 1
                if event.invalid:
                    stats.records["invalid"] += sum(event.invalid.values())
                self._ack(event)
            elif isinstance(event, SkippedMessage):
                stats.messages[event.mode.value] += 1
                stats.records["skipped_signal"] += event.count
                log.debug("skipping %d %s records (fluent_signal %d) from %s", event.count, event.tag, event.signal, self.peer)
                self._ack(event)
            elif isinstance(event, Heartbeat):
                stats.heartbeats += 1
            elif isinstance(event, AuthSucceeded):
                if self._handshake_timer is not None:
                    self._handshake_timer.cancel()
                transport.write(conn.data_to_send())
                log.debug("authenticated %s as host %r user %r", self.peer, event.hostname, event.username)
            elif isinstance(event, AuthFailed):
                stats.auth_failures[event.reason] += 1
                log.warning("authentication failed for %s (host %r): %s", self.peer, event.hostname, event.reason)
                transport.write(conn.data_to_send())
                self._close()
                return
            elif isinstance(event, EndOfStream):
                self._close()
                return
        if self.server.stopping and conn.buffered_bytes == 0:
            # Draining for shutdown: this connection is between messages now.
            self._close()

    def _ack(self, message: Message | SkippedMessage) -> None:
        ack = self.conn.ack(message)
        if ack:
            assert self.transport is not None
            self.transport.write(ack)  # one write: Fluent Bit expects each ack in one read
            self.server.stats.acks += 1

    def _fail(self, reason: str, detail: str) -> None:
        self.server.stats.errors[reason] += 1
        log.warning("closing connection from %s: %s: %s", self.peer, reason, detail)
        self._close()

    def _close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()  # flushes pending writes (acks, PONG) first

    def _on_idle(self) -> None:
        self._fail(IDLE_TIMEOUT, f"no data for {self.server.config.limits.idle_timeout:g} s")

    def _on_handshake_timeout(self) -> None:
        if self.conn.state is State.AWAITING_PING:
            self.server.stats.auth_failures[HANDSHAKE_TIMEOUT] += 1
            self._fail(HANDSHAKE_TIMEOUT, f"no PING within {self.server.config.limits.handshake_timeout:g} s")

    def drain(self) -> None:
        """Shutdown: close now if between messages, else after the current message completes."""
        if self.conn.buffered_bytes == 0:
            self._close()

    def abort(self) -> None:
        self.server.stats.errors[SHUTDOWN] += 1
        log.warning("shutdown: dropping connection from %s in the middle of a message (it was not acked)", self.peer)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class ForwardServer:
    """Listens on TCP (optionally TLS) and/or a Unix socket and serves Forward connections."""

    def __init__(self, config: ServerConfig, sink: Sink, stats: ReceiverStats | None = None,
                 defer_packed: bool = False) -> None:
        #: The sink decodes PackedForward payloads itself (``Message.payload``);
        #: it raises ForwardError for one it refuses, which closes the connection.
        self.defer_packed = defer_packed
        self.config = config
        self.sink = sink
        self.stats = stats if stats is not None else ReceiverStats()
        self.connections: set[_ForwardProtocol] = set()
        self.stopping = False
        self._servers: list[asyncio.base_events.Server] = []
        self._all_closed: asyncio.Event | None = None

    @property
    def port(self) -> int | None:
        """The TCP port actually bound (useful with ``port=0``), or ``None`` without TCP."""
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    return name[1]
        return None

    @property
    def listening(self) -> bool:
        return bool(self._servers) and not self.stopping

    async def start(self) -> None:
        """Bind every configured listener. Raises ``OSError`` (port in use, bad path) or ``ssl.SSLError``."""
        loop = asyncio.get_running_loop()
        context = self.config.ssl_context()
        try:
            if self.config.port is not None:
                name = "tls" if context else "tcp"
                self._servers.append(
                    await loop.create_server(
                        lambda: _ForwardProtocol(self, name),
                        self.config.host,
                        self.config.port,
                        ssl=context,
                        reuse_address=True,
                        reuse_port=self.config.reuse_port or None,
                    )
                )
            if self.config.unix_socket and not self.config.reuse_port:  # one worker would take the path from another
                path = self.config.unix_socket
                if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)  # a stale socket from a previous run
                self._servers.append(await loop.create_unix_server(lambda: _ForwardProtocol(self, "unix"), path))
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers.clear()
            raise
        for server in self._servers:
            for sock in server.sockets:
                log.info("listening for Forward on %s", _describe(sock.getsockname(), context is not None))

    def connection_closed(self) -> None:
        if self.stopping and not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let open connections finish the message in flight, then close.

        Whatever was fully received has been handed to the sink and acked
        already; a connection still in the middle of a message gets up to
        ``grace`` seconds (default ``config.shutdown_grace``) to complete it.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        self.stopping = True
        self._all_closed = asyncio.Event()
        for server in self._servers:
            server.close()
        for protocol in list(self.connections):
            protocol.drain()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except asyncio.TimeoutError:
                for protocol in list(self.connections):
                    protocol.abort()
        # Let the transports' close callbacks run before returning.
        for _ in range(3):
            await asyncio.sleep(0)
        if self.config.unix_socket and os.path.exists(self.config.unix_socket):
            try:
                os.unlink(self.config.unix_socket)
            except OSError:
                pass
        self._servers.clear()


def _describe(name: object, tls: bool) -> str:
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        host = f"[{host}]" if ":" in host else host
        return f"{'tls' if tls else 'tcp'}://{host}:{port}"
    return f"unix://{name}"
