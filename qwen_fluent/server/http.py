"""The HTTP endpoint Prometheus and Kubernetes talk to: ``/metrics``, ``/healthz``, ``/readyz``.

``/metrics`` renders with our own exposition writer
(:mod:`qwen_fluent.metrics.exposition`): collectors with an ``expose(writer)``
fast path write pre-built label blocks and format only numbers; the others'
prometheus-client families go through its generic path. It negotiates the
format as prometheus-client does: OpenMetrics 1.0 (with exemplars) when
``Accept`` asks for ``application/openmetrics-text``, else the Prometheus
text format 0.0.4; gzip (level 1) when ``Accept-Encoding`` allows.

:class:`MetricsHTTPServer` runs the standard library's threading HTTP server
in its own daemon thread, not on the asyncio loop, because a scrape is
blocking work: collectors build snapshots (CPU-bound), the GPU collector
makes blocking NVML calls, and the exposition is rendered in Python. Done on
the event loop, a large scrape would stop record intake for its whole
duration (the article's exporter's ``/metrics`` stalls for seconds under
load). In a thread, the interpreter hands the GIL back to the loop at least
every ``sys.getswitchinterval()`` (5 ms): the renderer holds it no longer at
a time because it is Python code whose C calls are all short, the writer
joining and encoding its output in pieces of at most
:data:`~qwen_fluent.metrics.exposition.FLUSH_CHUNKS` chunks (~2 MB, about a
millisecond each); the response is compressed (zlib releases the GIL while
it deflates) and sent piece by piece, never joined into one large buffer.
Intake slows during a scrape but never stops (``bench/bench_metrics.py``
measures the longest stall a second thread sees). It is also what
prometheus-client's own ``start_http_server`` does.

Limits, each bounded so that a misbehaving client cannot pile up threads:

- :data:`MAX_CONNECTIONS` connections at once; more are closed on accept;
- :data:`REQUEST_TIMEOUT` seconds to send a request (slow clients);
- one scrape renders at a time (:data:`RENDER_WAIT`): renders are CPU-bound
  under one GIL, so running two at once only makes both slower;
- the request line and headers are bounded by ``http.server`` (64 KiB line,
  100 headers).

``/healthz`` answers 200 while the process serves HTTP (liveness);
``/readyz`` answers 200 only while ``ready()`` is true (the Forward listener
is bound and not shutting down), else 503. A collector that raises makes
``/metrics`` answer 500 (logged); the endpoint keeps serving.

With a web configuration file (``--web-config-file``, the Prometheus exporter
toolkit's format, :mod:`qwen_fluent.server.webconfig`) the endpoint serves
TLS and asks for basic auth, as every Go exporter given the same file does.
The TLS handshake runs in the connection's own thread (never in the accept
loop, where one slow client would hold up every other), within
:data:`REQUEST_TIMEOUT`. A client that speaks plain HTTP to the TLS port is
answered ``400`` with Go's sentence for it ("Client sent an HTTP request to an
HTTPS server."), so a scrape_config that forgot ``scheme: https`` says so in
Prometheus' target page. Basic auth, the rate limit and the extra headers
apply to every path except :data:`OPEN_PATHS`: ``/healthz`` and ``/readyz``
say only whether the process is up, and kubelet's probes cannot send a
password without writing it into the Pod spec (the toolkit has no probe paths
of its own; its exporters serve ``/metrics`` and a landing page, both behind
auth). Over TLS they are still encrypted; kubelet's ``scheme: HTTPS`` probes
do not verify certificates, so they work with any ``tls_server_config``
except one that requires client certificates.
"""

from __future__ import annotations

import logging
import socket
import threading
import zlib
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import gzip_accepted
from prometheus_client.registry import Collector

from ..metrics.exposition import negotiate, render
from .webconfig import Active, WebConfigError, WebConfigWatcher, allowed_san

log = logging.getLogger(__name__)

#: Connections served at once. Prometheus (one or an HA pair) holds one per
#: scrape, kubelet one per probe; 16 leaves room for a human with curl.
MAX_CONNECTIONS = 16
#: Seconds a client has to send its request, and the socket timeout for the
#: reply. 10 s, Prometheus' default scrape_timeout: a scraper will have given
#: up by then anyway.
REQUEST_TIMEOUT = 10.0
#: Seconds a scrape waits for another scrape's render to finish before it is
#: answered 503. Same reason as REQUEST_TIMEOUT.
RENDER_WAIT = 10.0

#: gzip level of /metrics: the text exposition compresses ~10x at level 1
#: already, and higher levels cost scrape latency for a few percent.
GZIP_LEVEL = 1
#: zlib's wbits for a gzip container (header and CRC trailer) around deflate.
_GZIP_WBITS = 16 + zlib.MAX_WBITS

_PLAIN = "text/plain; charset=utf-8"

#: Paths served without basic auth (module docstring: kubelet's probes).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: Bytes peeked at on a TLS port to tell a TLS ClientHello (first byte 0x16,
#: a handshake record) from plain HTTP; enough for the longest method name.
_PEEK = 8
#: What Go's net/http answers a plain HTTP request on a TLS port (its exact text,
#: so it reads the same in Prometheus' target page as for a Go exporter).
_HTTP_ON_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Re-binding right after a restart must not fail on TIME_WAIT.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], family: int,
                 owner: MetricsHTTPServer) -> None:
        self.address_family = family
        self.owner = owner
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.owner.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            watcher = self.owner.web
            if watcher is not None and watcher.tls:
                request = self._tls_accept(watcher, request)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _tls_accept(self, watcher: WebConfigWatcher, sock: socket.socket) -> Any:
        """The TLS socket for an accepted connection, after the handshake; ``None`` (closed) if it fails."""
        owner = self.owner
        tls = None
        try:
            sock.settimeout(REQUEST_TIMEOUT)
            head = sock.recv(_PEEK, socket.MSG_PEEK)
            if head and head[:1] != b"\x16":
                owner.tls_refused += 1
                if head.startswith(_HTTP_METHODS) or any(m.startswith(head) for m in _HTTP_METHODS):
                    sock.sendall(_HTTP_ON_TLS)
                    log.debug("plain HTTP on the TLS /metrics port from %s", _peer(sock))
                self.shutdown_request(sock)
                return None
            try:
                active = watcher.current()
            except WebConfigError:
                owner.tls_refused += 1
                self.shutdown_request(sock)
                return None
            assert active.context is not None  # watcher.tls: every accepted config has TLS
            tls = active.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            tls.do_handshake()
            sans = active.config.tls.client_allowed_sans
            if sans is not None and not allowed_san(tls.getpeercert(), sans):
                owner.tls_refused += 1
                log.info("/metrics client %s: no allowed SAN in its certificate", _peer(tls))
                self.shutdown_request(tls)
                return None
            return tls
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a timeout too
            owner.tls_refused += 1
            log.debug("/metrics TLS handshake failed: %s", exc)
            # After wrap_socket the TLS socket owns the descriptor (the plain one is detached).
            self.shutdown_request(tls if tls is not None else sock)
            return None


def _peer(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return "?"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "qwen-fluent"
    sys_version = ""

    #: The file's extra headers, set by :meth:`_admit` for this request.
    _headers: Sequence[tuple[str, str]] = ()

    def do_GET(self) -> None:
        if self._admit(body=True):
            self._serve(body=True)

    def do_HEAD(self) -> None:
        if self._admit(body=False):
            self._serve(body=False)

    def _other(self) -> None:
        if self._admit(body=True):
            self._reply(405, b"method not allowed; use GET\n", _PLAIN, body=True, extra=[("Allow", "GET, HEAD")])

    def _admit(self, body: bool) -> bool:
        """Apply the web configuration (rate limit, headers, basic auth) as the toolkit's handler does.

        Answers the request itself and returns ``False`` when it must not be served.
        """
        self._headers = ()
        owner = self.server.owner
        watcher = owner.web
        if watcher is None:
            return True
        try:
            active: Active = watcher.current()
        except WebConfigError:
            self._reply(500, b"Internal Server Error\n", _PLAIN, body)
            return False
        self._headers = list(active.config.headers.items())
        if self.path.split("?", 1)[0] in OPEN_PATHS:
            return True
        if active.limiter is not None and not active.limiter.allow():
            owner.rate_limited += 1
            self._reply(429, b"Too Many Requests\n", _PLAIN, body)
            return False
        if active.auth is None:
            return True
        if active.auth.check(self.headers.get("Authorization")) is not None:
            return True
        owner.unauthorized += 1
        self._reply(401, b"Unauthorized\n", _PLAIN, body, [("WWW-Authenticate", "Basic")])
        return False

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics(owner, body)
        elif path == "/healthz":
            self._reply(200, b"ok\n", _PLAIN, body)
        elif path == "/readyz":
            try:
                ready = bool(owner.ready())
            except Exception:  # noqa: BLE001 - a failing check means not ready
                log.exception("readiness check failed")
                ready = False
            if ready:
                self._reply(200, b"ready\n", _PLAIN, body)
            else:
                self._reply(503, b"not ready\n", _PLAIN, body)
        elif path == "/":
            self._reply(200, b"qwen-fluent: /metrics /healthz /readyz\n", _PLAIN, body)
        else:
            self._reply(404, b"not found; try /metrics\n", _PLAIN, body)

    def _metrics(self, owner: MetricsHTTPServer, body: bool) -> None:
        fmt = negotiate(self.headers.get("Accept", ""))
        if not owner._render_lock.acquire(timeout=RENDER_WAIT):
            self._reply(503, b"another scrape is rendering; try again\n", _PLAIN, body)
            return
        try:
            pieces = render(owner.registry, fmt)
        except Exception:  # noqa: BLE001 - a broken collector must not kill the endpoint
            log.exception("rendering /metrics failed")
            self._reply(500, b"rendering metrics failed; see the receiver's log\n", _PLAIN, body)
            return
        finally:
            owner._render_lock.release()
        extra = []
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            # Piece by piece: each compress() call releases the GIL while zlib deflates.
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
            pieces = [compressor.compress(piece) for piece in pieces]
            pieces.append(compressor.flush())
            extra.append(("Content-Encoding", "gzip"))
        extra.append(("Vary", "Accept, Accept-Encoding"))
        self._reply(200, pieces, fmt.content_type, body, extra)

    def _reply(self, code: int, payload: bytes | Sequence[bytes], content_type: str, body: bool,
               extra: list[tuple[str, str]] | None = None) -> None:
        pieces = [payload] if isinstance(payload, bytes) else payload
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(piece) for piece in pieces)))
        for name, value in (*self._headers, *(extra or ())):
            self.send_header(name, value)
        self.end_headers()
        if body:
            for piece in pieces:
                if piece:
                    self.wfile.write(piece)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("http %s %s", self.address_string(), format % args)


class MetricsHTTPServer:
    """Serves ``registry`` on ``/metrics`` plus ``/healthz`` and ``/readyz``, from a thread.

    ``port`` 0 picks a free port; :attr:`port` is the bound one after
    :meth:`start`. :meth:`stop` closes the socket and joins the thread.
    ``web_config_file``: the exporter toolkit's web configuration (TLS, basic
    auth, headers, rate limit); :meth:`start` loads it and raises
    :class:`~qwen_fluent.server.webconfig.WebConfigError` (one line) if it is wrong.
    """

    def __init__(self, host: str, port: int, registry: Collector,
                 ready: Callable[[], bool] = lambda: True, web_config_file: str | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.registry = registry
        self.ready = ready
        self.web_config_file = web_config_file
        #: The loaded web configuration, from :meth:`start`; ``None`` without a file.
        self.web: WebConfigWatcher | None = None
        #: Connections closed on accept because MAX_CONNECTIONS were open.
        self.refused = 0
        #: TLS connections refused: plain HTTP, failed handshakes, no allowed SAN.
        self.tls_refused = 0
        #: Requests answered 401 (no or wrong credentials) and 429 (rate_limit).
        self.unauthorized = 0
        self.rate_limited = 0
        self._render_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        """``https`` when the web configuration turned TLS on, else ``http``."""
        return "https" if self.web is not None and self.web.tls else "http"

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a daemon thread. Raises ``OSError`` if the address is taken."""
        if self._server is not None:
            return
        if self.web_config_file:
            self.web = WebConfigWatcher(self.web_config_file)
            config = self.web.current().config
            log.info("/metrics web config %s: TLS %s, basic auth %s", self.web_config_file,
                     "on" if self.web.tls else "off",
                     f"for {len(config.users)} user(s)" if config.users else "off")
        host = self.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host, self.requested_port), _Handler, family, self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="qwen-fluent-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port; waits for the serving thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(REQUEST_TIMEOUT)
        self._server = None
        self._thread = None

    def __enter__(self) -> MetricsHTTPServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
