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

**Durable acks** (``durable``, set by ``serve --state-dir``): the ack of a
message is written only once a checkpoint that contains it is on disk. After
the sink returned, the server asks ``durable()`` for a future, queues the ack
behind it, and writes the queued acks of a connection in order as their
futures resolve (the checkpointer's group commit resolves them in call order).
A failed checkpoint closes the connection without those acks
(``checkpoint_failed``): the client resends, and the duplicate window, restored
with the counters, tells whether the resend was already counted.

**Backpressure**: a connection with :data:`MAX_PENDING_ACKS` acks waiting for
a checkpoint stops being read (``transport.pause_reading``) until they are
written, so a disk slower than the intake pushes back through TCP to the
client, which buffers, instead of the receiver queueing without bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import ssl
import stat
from collections import Counter, deque
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
from ..forward.errors import HttpOnForwardPort, PlainOnTlsPort
from ..forward.decode import GROUP_MARKER
from ..logsample import LogSampler
from ..stats import ReceiverStats

log = logging.getLogger("qwen_fluent.server")

Sink = Callable[[Message], None]
#: ``durable()``: a future resolved once everything applied before the call is in a checkpoint on disk.
Durable = Callable[[], "asyncio.Future[None]"]

#: Acks one connection may have waiting for a checkpoint before it stops being read. Fluent Bit
#: keeps one chunk in flight per connection and waits for its ack, so it never comes near this;
#: a client that pipelines (Fluentd's ``require_ack_response`` with several chunks) gets 64
#: messages of headroom (one group commit's worth at thousands of messages per second) and then
#: TCP flow control. Each waiting ack holds about 200 bytes (its bytes, a future), so with
#: ``Limits.max_connections`` (256) the queues hold at most about 3 MB.
MAX_PENDING_ACKS = 64

#: ReceiverStats.errors reasons the server adds to the core's ForwardError reasons.
IDLE_TIMEOUT = "idle_timeout"
HANDSHAKE_TIMEOUT = "handshake_timeout"
SINK_FAILED = "sink_failed"
SHUTDOWN = "shutdown"
#: The checkpoint that was to make a message durable failed: closed without its ack (it is resent).
CHECKPOINT_FAILED = "checkpoint_failed"
#: The whole message did not arrive within ``Limits.message_deadline`` (a trickle: slow-loris).
MESSAGE_DEADLINE = "message_deadline"
#: All connections together held more than ``Limits.max_buffered_bytes`` of partial messages: the
#: one holding the most was closed.
MEMORY_BUDGET = "memory_budget"
#: A connection still waiting for its PING was closed to make room in the unauthenticated pool.
UNAUTHENTICATED_EVICTED = "unauthenticated_evicted"
#: A plain (not TLS) peer on the TLS port; the same reason as the core's PlainOnTlsPort.
PLAIN_ON_TLS_PORT = PlainOnTlsPort.reason
#: A connection refused as it was accepted because one source address already
#: holds ``Limits.max_connections_per_address`` (also counted in connections_refused).
TOO_MANY_FROM_ADDRESS = "too_many_from_address"
#: The same, because ``Limits.max_connections`` are open.
TOO_MANY_CONNECTIONS = "too_many_connections"
#: A connection refused as it was accepted because its address is in none of
#: ``ServerConfig.allowed_networks`` (Fluentd: ``allow_anonymous_source false``
#: with ``<client>`` networks).
SOURCE_NOT_ALLOWED = "source_not_allowed"


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
    #: When not empty, only peers whose address is in one of these networks
    #: may connect over TCP; every other connection is refused as it is
    #: accepted, before it can send a byte or hold a slot (Fluentd's
    #: ``<security>`` with ``allow_anonymous_source false`` and ``<client>
    #: network``). Empty: any address (the default, as Fluentd's). A Unix
    #: socket peer is not filtered: the socket file's permissions decide.
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
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


#: OpenSSL's reasons for a first record that is not TLS at all, by the error reason counted for it.
_NOT_TLS: dict[str, str] = {
    "HTTP_REQUEST": HttpOnForwardPort.reason,  # OpenSSL recognises "GET ", "POST ", "HEAD ", "PUT "
    "HTTPS_PROXY_REQUEST": HttpOnForwardPort.reason,  # "CONNECT "
    "WRONG_VERSION_NUMBER": PLAIN_ON_TLS_PORT,  # the record header's version is not 3.x: not a TLS record
    "UNKNOWN_PROTOCOL": PLAIN_ON_TLS_PORT,
    "PACKET_LENGTH_TOO_LONG": PLAIN_ON_TLS_PORT,
    "RECORD_LAYER_FAILURE": PLAIN_ON_TLS_PORT,  # OpenSSL 3.2+ words some of the above so
}
_NOT_TLS_ADVICE = {
    HttpOnForwardPort.reason: "the peer sent an HTTP request to the Forward port; point HTTP clients at the "
                              "metrics port, and Fluent Bit's forward output here",
    PLAIN_ON_TLS_PORT: "the peer sent plain Forward (no TLS) to a port that serves TLS; turn TLS on in the "
                       "client (Fluent Bit: tls on) or serve plain Forward here",
}


class _HandshakeLoggingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` that logs, once, why a TLS handshake was refused over a certificate.

    asyncio's TLS server drops a failed handshake silently: the protocol is
    never told of the connection, and the error reaches a log only with the
    event loop in debug mode. The handshake is the one place that sees
    OpenSSL's reason, so it is logged here, through ``SSLContext.sslobject_class``,
    the hook the standard library offers for this. asyncio gives no peer
    address at that point, so the line names the reason and the fix, not the
    client. A peer that does not speak TLS at all (plain Forward, HTTP) is
    named, logged and counted under its reason in ``server_stats``, which
    the server sets on a subclass of its own; other failures (a probe that
    connects and leaves) are logged at debug level.
    """

    #: The server's counters (set on a per-server subclass by ForwardServer.start).
    server_stats: ReceiverStats | None = None

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
                reason = _NOT_TLS.get(exc.reason or "")
                if reason is None:
                    log.debug("TLS handshake failed: %s", exc)
                else:
                    if self.server_stats is not None:
                        self.server_stats.errors[reason] += 1
                    log.warning("closing a connection on the TLS port: %s: %s (OpenSSL: %s; see %s)",
                                reason, _NOT_TLS_ADVICE[reason], exc.reason, TLS_DOCS)
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
        #: The peer's IP address, for the per-address limit ("" for a Unix socket peer: not limited).
        self.address = ""
        self.closing = False
        self._idle: asyncio.TimerHandle | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        #: This connection's part of ForwardServer.buffered: its partial message, as of its last read.
        self.held = 0
        self.reading_paused = False
        #: Why reading is paused: "write" (the peer does not read its acks), "acks" (too many acks
        #: wait for a checkpoint), "closing" (closing once its acks are written). Reading resumes
        #: when the set is empty again.
        self._pauses: set[str] = set()
        #: Acks waiting for their checkpoint, in the order of the messages (durable acks only).
        self.pending: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        #: Close once the pending acks are written (end of stream or shutdown while some wait).
        self._close_after_acks = False

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else (peer or "unix")
        server = self.server
        limits = server.config.limits
        stats = server.stats
        address = peer[0] if isinstance(peer, tuple) else ""
        refusal = reason = None
        if server.stopping:
            refusal, reason = "shutting down", "shutdown"
        elif address and server.config.allowed_networks and not _allowed(address, server.config.allowed_networks):
            reason = SOURCE_NOT_ALLOWED
            refusal = f"{address} is in none of allowed_networks"
        elif len(server.connections) >= limits.max_connections:
            reason = TOO_MANY_CONNECTIONS
            refusal = f"{len(server.connections)} connections open (max_connections)"
        elif address and server.per_address[address] >= limits.max_connections_per_address:
            reason = TOO_MANY_FROM_ADDRESS
            refusal = f"{server.per_address[address]} connections open from {address} (max_connections_per_address)"
        if refusal is not None:
            if reason != "shutdown":
                stats.errors[reason] += 1
            stats.connections_refused += 1
            sampled = server.log_sample(f"refused:{reason}")
            if sampled is not None:  # counted always, logged sampled: 1000 refusals are not 1000 lines
                log.warning("refusing connection from %s: %s%s", self.peer, refusal, sampled[1])
            transport.abort()
            return
        self.address = address
        if address:
            server.per_address[address] += 1
        server.connections.add(self)
        stats.connections_opened[self.transport_name] += 1
        stats.connections_active += 1
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(limits.idle_timeout, self._on_idle)
        hello = self.conn.data_to_send()
        if hello:
            pending = server.unauthenticated
            if len(pending) >= limits.max_unauthenticated_connections:
                # The one that has waited longest makes room: a real client PINGs within a round trip.
                oldest = next(iter(pending))
                oldest._fail(UNAUTHENTICATED_EVICTED, f"{len(pending)} connections waiting for their PING "
                                                      "(max_unauthenticated_connections); the oldest makes room")
                pending.pop(oldest, None)
            pending[self] = None
            transport.write(hello)
            self._handshake_timer = loop.call_later(limits.handshake_timeout, self._on_handshake_timeout)

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
        self._watch_deadline()
        self._account()

    def _account(self) -> None:
        """Update this connection's share of the server's buffered bytes; over the budget, shed the largest."""
        held = 0 if self.closing else self.conn.buffered_bytes
        server = self.server
        server.buffered += held - self.held
        self.held = held
        if server.buffered > server.config.limits.max_buffered_bytes:
            server.shed()

    def _watch_deadline(self) -> None:
        """Start the whole-message deadline when a message begins, stop it when none is in flight."""
        if self.closing:
            return
        if self.conn.buffered_bytes:
            if self._deadline is None:
                self._deadline = asyncio.get_running_loop().call_later(
                    self.server.config.limits.message_deadline, self._on_deadline)
        elif self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def eof_received(self) -> bool:
        if not self.closing:
            self.conn.receive_data(b"")
            self._process()
        # Acks still waiting for a checkpoint: keep the half-open connection until they are written
        # (_close_after_acks). TLS cannot stay half open (asyncio ignores True there): its acks are
        # lost with the connection and the client's resend is recognised as a duplicate.
        return bool(self.pending) and not self.closing

    def pause_writing(self) -> None:
        """The peer is not reading what we write (its acks): stop reading from it.

        asyncio calls this when the transport's write buffer passes its
        high-water mark (64 KiB by default). A client that sends chunks with
        ``chunk`` options but never reads the acks would otherwise make the
        acks pile up in memory without bound; once reading is paused, the
        buffer holds at most the mark plus the acks of one read.
        """
        self._pause("write")

    def resume_writing(self) -> None:
        self._resume("write")

    def _pause(self, why: str) -> None:
        if self.transport is None or self.closing:
            return
        if not self._pauses:
            self.transport.pause_reading()
        self._pauses.add(why)
        self.reading_paused = True

    def _resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if not self._pauses:
            self.reading_paused = False
            if self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._idle, self._handshake_timer, self._deadline):
            if timer is not None:
                timer.cancel()
        self.closing = True  # nothing more is written: acks that resolve later are dropped
        self.pending.clear()  # their messages were counted; the client resends and the window knows them
        self.server.unauthenticated.pop(self, None)
        self.server.buffered -= self.held
        self.held = 0
        if self in self.server.connections:
            self.server.connections.discard(self)
            if self.address:
                per_address = self.server.per_address
                per_address[self.address] -= 1
                if per_address[self.address] <= 0:
                    del per_address[self.address]
            self.server.stats.connections_active -= 1
            self.server.connection_closed()

    # -- the work --------------------------------------------------------------

    def _process(self) -> None:
        """Pull every complete event out of the core and act on it."""
        stats = self.server.stats
        transport = self.transport
        assert transport is not None
        conn = self.conn
        event: object = None
        while not self.closing:
            # Drop the previous message before the next is decoded: both alive at once doubled the peak.
            event = None
            try:
                event = conn.next_event()
            except ForwardError as exc:
                self._fail(exc.reason, str(exc))
                return
            if event is NEED_DATA:
                break
            if isinstance(event, Message):
                # Which connection it came on: a resend after a lost ack comes on a new one (reliability/).
                event = event._replace(connection=conn.id)
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
                if event.group_markers:
                    stats.records[GROUP_MARKER] += event.group_markers
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
                self.server.unauthenticated.pop(self, None)
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
        if not ack:
            return
        durable = self.server.durable
        if durable is None:
            assert self.transport is not None
            # Counted first: a client that got its ack and scrapes /metrics (another thread) sees it counted.
            self.server.stats.acks += 1
            self.transport.write(ack)  # one write: Fluent Bit expects each ack in one read
            return
        # Duplicates too: the copy that was counted may not be on disk yet (it came moments ago on the
        # connection that failed), and its ack must not promise more than a crash would keep.
        future = durable()
        self.pending.append((ack, future))
        future.add_done_callback(self._on_durable)
        if len(self.pending) >= MAX_PENDING_ACKS:
            self._pause("acks")

    def _on_durable(self, future: asyncio.Future[None]) -> None:
        """A checkpoint finished: write the acks at the head of the queue whose checkpoint is on disk."""
        if not future.cancelled():
            future.exception()  # retrieved here, whatever happens to this connection
        pending = self.pending
        while pending and pending[0][1].done():
            ack, done = pending.popleft()
            if self.closing or self.transport is None:
                continue
            error = None if done.cancelled() else done.exception()
            if done.cancelled() or error is not None:
                pending.clear()
                self._fail(CHECKPOINT_FAILED, f"the checkpoint was not written ({error or 'cancelled'}); "
                                              "closing without acks so that the client resends")
                return
            self.server.stats.acks += 1
            self.transport.write(ack)
        if len(pending) < MAX_PENDING_ACKS:
            self._resume("acks")
        if not pending and self._close_after_acks:
            self._close()

    def _fail(self, reason: str, detail: str) -> None:
        self.server.stats.errors[reason] += 1
        sampled = self.server.log_sample(reason)
        if sampled is not None:  # counted always, logged sampled (logsample.py)
            log.warning("closing connection from %s: %s: %s%s", self.peer, reason, detail, sampled[1])
        self.pending.clear()  # a failed connection writes no more acks
        self._close()

    def _close(self) -> None:
        """Close after writing what is owed: pending writes are flushed, acks waiting for a checkpoint
        are waited for first (a failure closes through :meth:`_fail`, which drops them)."""
        if self.pending and not self.closing:
            self._close_after_acks = True
            self._pause("closing")
            return
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()  # flushes pending writes (acks, PONG) first

    def _on_idle(self) -> None:
        self._fail(IDLE_TIMEOUT, f"no data for {self.server.config.limits.idle_timeout:g} s")

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.conn.buffered_bytes:
            self._fail(MESSAGE_DEADLINE, f"a message took longer than {self.server.config.limits.message_deadline:g} s "
                                         f"to arrive ({self.conn.buffered_bytes} bytes so far)")

    def _on_handshake_timeout(self) -> None:
        if self.conn.state is State.AWAITING_PING:
            self.server.stats.auth_failures[HANDSHAKE_TIMEOUT] += 1
            self._fail(HANDSHAKE_TIMEOUT, f"no PING within {self.server.config.limits.handshake_timeout:g} s")

    def drain(self) -> None:
        """Shutdown: close now if between messages (after the acks waiting for a checkpoint), else after
        the current message completes."""
        if self.conn.buffered_bytes == 0:
            self._close()

    def abort(self) -> None:
        self.pending.clear()
        self.server.stats.errors[SHUTDOWN] += 1
        log.warning("shutdown: dropping connection from %s in the middle of a message (it was not acked)", self.peer)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class ForwardServer:
    """Listens on TCP (optionally TLS) and/or a Unix socket and serves Forward connections."""

    def __init__(self, config: ServerConfig, sink: Sink, stats: ReceiverStats | None = None,
                 defer_packed: bool = False, durable: Durable | None = None) -> None:
        #: The sink decodes PackedForward payloads itself (``Message.payload``);
        #: it raises ForwardError for one it refuses, which closes the connection.
        self.defer_packed = defer_packed
        #: Ack a message only once a checkpoint containing it is on disk (module doc); ``None``: at once.
        self.durable = durable
        self.config = config
        self.sink = sink
        self.stats = stats if stats is not None else ReceiverStats()
        self.connections: set[_ForwardProtocol] = set()
        #: Open connections by source address (TCP and TLS), for ``Limits.max_connections_per_address``.
        self.per_address: Counter[str] = Counter()
        #: Connections waiting for their PING, oldest first (a dict keeps insertion order).
        self.unauthenticated: dict[_ForwardProtocol, None] = {}
        #: Bytes of partial messages all connections hold (``Limits.max_buffered_bytes``).
        self.buffered = 0
        self.stopping = False
        #: Warnings about refused and closed connections: the first 5 per reason, then one a minute.
        self.log_sample = LogSampler()
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
        if context is not None:
            # A subclass of this server's own, so that a peer that does not speak TLS is counted here.
            context.sslobject_class = type("_ServerSSLObject", (_HandshakeLoggingSSLObject,),
                                           {"server_stats": self.stats})
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
                bound = sock.getsockname()  # not "name": the protocol factories above close over that
                log.info("listening for Forward on %s", _describe(bound, context is not None))
                if self.config.auth is None and context is None and isinstance(bound, tuple) and not _loopback(bound[0]):
                    log.warning(
                        "Forward on %s is reachable beyond this machine with neither a shared key nor TLS: anyone "
                        "who can reach the port can write records into the metrics, and read nothing back but "
                        "acks. Set --shared-key (and --tls-cert/--tls-key), or listen on 127.0.0.1 (see %s)",
                        _describe(bound, False), SECURITY_DOCS)

    def shed(self) -> None:
        """Close the connections holding the largest partial messages until the total fits the budget.

        Closing the largest frees the most at once and spares the many small
        messages of ordinary clients; the one closed is not acked, so a real
        client resends its chunk on a new connection.
        """
        budget = self.config.limits.max_buffered_bytes
        while self.buffered > budget:
            victim = max(self.connections, key=lambda p: p.held, default=None)
            if victim is None or victim.held == 0:
                return
            victim._fail(MEMORY_BUDGET, f"{self.buffered} bytes in partial messages across connections "
                                        f"(max_buffered_bytes {budget}); this one held {victim.held}")
            self.buffered -= victim.held
            victim.held = 0

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


#: Where the security warnings send the reader.
SECURITY_DOCS = "docs/security.md"


def _allowed(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether ``address`` (a peer's IP, IPv4-mapped IPv6 read as IPv4) is in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _loopback(host: str) -> bool:
    """Whether ``host`` (a bound address) is reachable only from this machine."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _describe(name: object, tls: bool) -> str:
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        host = f"[{host}]" if ":" in host else host
        return f"{'tls' if tls else 'tcp'}://{host}:{port}"
    return f"unix://{name}"
