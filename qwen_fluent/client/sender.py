"""A blocking Forward sender that behaves like Fluent Bit's ``forward`` output.

One connection, one message in flight: a message is written, and with an ack
id (``Require_ack_response on``) the sender waits for ``{"ack": id}`` before
the next one, as each Fluent Bit output worker does for its chunks. When the
connection breaks (reset, closed, no ack within ``ack_timeout``), it opens a
new one (running the handshake again) and writes the *same bytes* with the
*same chunk id*, up to ``retries`` more times with a doubling wait between
tries, then raises :class:`DeliveryFailed`. Failures a retry cannot fix (the
handshake refused, a reply that is not the ack due, a certificate not
trusted) are raised at once.

At-least-once, as in Fluent Bit: a message whose ack was lost is delivered
twice. Without acks a message counts as sent once it is written, and one
written into a connection the receiver is closing is lost; the sender lowers
that risk by checking a reused connection for a close before writing.

:meth:`ForwardSender.close` may be called from another thread: it shuts the
socket, which wakes a send blocked on an ack, and the send raises
:class:`SenderClosed` instead of retrying.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import ssl
import threading
import time

from .errors import (
    AckTimeout,
    ClientError,
    ConnectionLost,
    DeliveryFailed,
    HandshakeError,
    SenderClosed,
    TLSFailed,
    UnexpectedReply,
)
from .messages import Chunk
from .replies import ClientHandshake, ReplyReader, ack_of

#: Bytes per recv(): replies are tens of bytes, so one read takes all there are.
READ_SIZE = 4096

#: Seconds to wait for the ack of one message. Fluent Bit waits as long as its
#: ``net.io_timeout`` allows (60 s by default) and Fluentd's out_forward 190 s;
#: a receiver on the same network acks a chunk in milliseconds, so 10 s means
#: it is gone or stuck, and a command-line user should not wait a minute to hear it.
ACK_TIMEOUT = 10.0

#: Seconds to connect and, with a shared key, to receive the HELO and PONG.
#: Fluent Bit's ``net.connect_timeout`` defaults to 10 s; half of it is plenty on a LAN.
CONNECT_TIMEOUT = 5.0

#: Resends of one message after the first try. Fluent Bit's ``Retry_Limit``
#: defaults to 1; a replay tool that gives up after one try loses records to a
#: receiver restart, so 5 tries span about 6 s of waits (below), long enough for a restart.
RETRIES = 5

#: First wait between tries, doubled each time up to :data:`MAX_RETRY_WAIT`.
#: Fluent Bit's scheduler starts at 1 s and caps at 2000 s for a whole pipeline;
#: a single sender retrying one connection can start lower.
RETRY_WAIT = 0.2
MAX_RETRY_WAIT = 5.0


@dataclasses.dataclass
class SenderStats:
    """What the sender did; ``resends`` and ``reconnects`` count the recoveries."""

    messages: int = 0  # messages delivered (acked, or written when no ack was asked for)
    records: int = 0  # records in those messages
    acked: int = 0  # messages acked
    writes: int = 0  # messages written, resends included
    bytes: int = 0  # bytes written, resends included
    resends: int = 0  # messages written again after a failure
    connections: int = 0  # connections opened (handshake included)


def tls_context(ca_file: str | None = None, *, verify: bool = True, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context: Fluent Bit's ``tls.ca_file``, ``tls.verify``, ``tls.crt_file``, ``tls.key_file``.

    Without ``ca_file`` the system's CAs are trusted. ``verify=False`` accepts
    any certificate (and any name): for a test receiver with a self-signed
    certificate, never across a network that matters.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class ForwardSender:
    """Sends :class:`Chunk` objects to one receiver over TCP (optionally TLS) or a Unix socket.

    ``shared_key`` turns on the secure-forward handshake (``self_hostname``,
    ``username`` and ``password`` as in Fluent Bit's forward output). A sender
    is used by one thread; only :meth:`close` may be called from another.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 24224, *, unix_path: str | None = None,
                 tls: ssl.SSLContext | None = None, tls_server_name: str | None = None,
                 shared_key: str = "", self_hostname: str | None = None, username: str = "", password: str = "",
                 ack_timeout: float = ACK_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT,
                 retries: int = RETRIES, retry_wait: float = RETRY_WAIT, max_retry_wait: float = MAX_RETRY_WAIT) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if ack_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be > 0")
        self.host, self.port, self.unix_path = host, port, unix_path
        self.tls, self.tls_server_name = tls, tls_server_name or host
        self.shared_key, self.self_hostname = shared_key, self_hostname
        self.username, self.password = username, password
        self.ack_timeout, self.connect_timeout = ack_timeout, connect_timeout
        self.retries, self.retry_wait, self.max_retry_wait = retries, retry_wait, max_retry_wait
        self.stats = SenderStats()
        #: The hostname the receiver signed its last PONG with (shared key only).
        self.server_hostname: str | None = None
        self._sock: socket.socket | None = None
        self._reader = ReplyReader()
        self._closed = threading.Event()
        self._lock = threading.Lock()  # guards _sock between send() and a close() from another thread

    # -- connection -------------------------------------------------------------

    def _open(self) -> socket.socket:
        if self.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(self.unix_path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.tls_server_name)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise TLSFailed(f"the receiver's certificate is not trusted: {exc.verify_message}") from exc
            except ssl.SSLError as exc:
                sock.close()
                if "ALERT" in (exc.reason or ""):  # the receiver refused our certificate (or lack of one)
                    raise TLSFailed(f"the receiver refused the TLS handshake: {exc.reason}") from exc
                raise
            except BaseException:
                sock.close()
                raise
        return sock

    def _connect(self) -> socket.socket:
        sock = self._open()
        self._reader = ReplyReader()
        try:
            if self.shared_key:
                hs = ClientHandshake(self.shared_key, self.self_hostname, self.username, self.password)
                sock.sendall(hs.ping(self._read_one(sock, self.connect_timeout, "the HELO")))
                self.server_hostname = hs.check_pong(self._read_one(sock, self.connect_timeout, "the PONG"))
        except BaseException:
            sock.close()
            raise
        self.stats.connections += 1
        with self._lock:
            if self._closed.is_set():
                sock.close()
                raise SenderClosed("the sender was closed")
            self._sock = sock
        return sock

    def _drop(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _usable(self) -> socket.socket | None:
        """The open connection, unless the receiver closed it meanwhile (idle timeout, restart).

        A receiver writes nothing unasked once the handshake is over, so a
        connection with something to read holds an EOF (or garbage): either way
        it is not one to write a message into.
        """
        sock = self._sock
        if sock is None:
            return None
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return sock
            # Readable: an EOF, a reset, or with TLS perhaps only a TLS 1.3 session ticket, which is
            # no data at all. A non-blocking read tells them apart.
            sock.setblocking(False)
            sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            return sock  # nothing for the application: the connection is fine
        except (OSError, ValueError):
            pass
        self._drop()  # closed (b""), broken, or bytes nobody asked for: not a connection to write into
        return None

    # -- replies ----------------------------------------------------------------

    def _read_one(self, sock: socket.socket, timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while True:
            for obj in self._reader:
                return obj
            left = deadline - time.monotonic()
            if left <= 0:
                raise AckTimeout(f"no reply within {timeout:g} s while waiting for {what}")
            sock.settimeout(left)
            try:
                data = sock.recv(READ_SIZE)
            except socket.timeout:
                raise AckTimeout(f"no reply within {timeout:g} s while waiting for {what}") from None
            if not data:
                raise ConnectionLost(f"the receiver closed the connection while we waited for {what}")
            self._reader.feed(data)

    def _wait_ack(self, sock: socket.socket, chunk: str) -> None:
        reply = self._read_one(sock, self.ack_timeout, f"the ack of chunk {chunk}")
        if isinstance(reply, list) and reply and reply[0] == "HELO":
            raise HandshakeError("the receiver asks for the secure-forward handshake: give the shared key")
        got = ack_of(reply)
        if got != chunk:
            raise UnexpectedReply(f"got the ack of chunk {got!r}, expected {chunk!r}")

    # -- sending ----------------------------------------------------------------

    def send(self, chunk: Chunk) -> None:
        """Deliver one message: write it, wait for its ack if it has a chunk id, retry on a new connection."""
        attempt = 0
        wait = self.retry_wait
        while True:
            if self._closed.is_set():
                raise SenderClosed("the sender was closed")
            try:
                sock = self._usable() or self._connect()
                sock.settimeout(self.ack_timeout)
                if attempt:
                    self.stats.resends += 1
                sock.sendall(chunk.data)
                self.stats.writes += 1
                self.stats.bytes += len(chunk.data)
                if chunk.chunk is not None:
                    self._wait_ack(sock, chunk.chunk)
                    self.stats.acked += 1
                self.stats.messages += 1
                self.stats.records += chunk.records
                return
            except (ConnectionLost, AckTimeout, OSError) as exc:
                self._drop()
                if self._closed.is_set():
                    raise SenderClosed("the sender was closed") from exc
                if attempt >= self.retries:
                    raise DeliveryFailed(
                        f"not delivered after {attempt + 1} tries to {self.where}: {_describe(exc)}", attempt + 1
                    ) from exc
                attempt += 1
                if self._closed.wait(wait):
                    raise SenderClosed("the sender was closed") from exc
                wait = min(wait * 2, self.max_retry_wait)
            except ClientError:
                self._drop()
                raise

    def send_all(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            self.send(chunk)

    @property
    def where(self) -> str:
        if self.unix_path:
            return self.unix_path
        return f"{'tls://' if self.tls else ''}{self.host}:{self.port}"

    def close(self) -> None:
        """Close the connection; a send in progress (in another thread) stops with :class:`SenderClosed`."""
        self._closed.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
            except OSError:
                pass
        self._drop()

    def __enter__(self) -> ForwardSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
