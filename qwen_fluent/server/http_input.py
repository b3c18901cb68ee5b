"""The HTTP input: log records POSTed as JSON, JSON lines or msgpack, as Fluent Bit's ``http`` output sends them.

Why a second input beside Forward: the article this project follows feeds its
exporter one JSON log line per HTTP POST, and some networks let only HTTP
through between a node and a central receiver (ingresses, proxies). Fluent
Bit's own ``http`` output is the natural sender (``plugins/out_http/http.c``).

What is accepted, by ``Content-Type`` (parameters such as ``charset`` ignored):

================================  ===========================================================
``application/json`` (and         one JSON object, an array of objects (Fluent Bit ``format
``text/plain``, ``*+json``)       json``), or objects one after another (``json_stream``,
                                  ``json_lines`` sent with a JSON type). A syntax error anywhere
                                  refuses the whole body (400): nothing is taken.
``application/x-ndjson``,         one JSON object per line (Fluent Bit ``format json_lines``).
``application/jsonl``,            A line that is not JSON, or not an object, is counted
``application/json-lines``        ``invalid`` and the other lines are taken; a body with no
                                  good line at all is refused (400).
``application/msgpack``,          Fluent Bit's chunk as it is (``format msgpack``): entries
``application/x-msgpack``         ``[time, record]`` or ``[[time, metadata], record]`` one after
                                  another, decoded by the Forward decoder (the typed fast path
                                  included); or bare maps, one record each.
================================  ===========================================================

``Content-Encoding: gzip`` or ``zstd`` (Fluent Bit ``compress gzip`` or
``zstd``) is decompressed in bounded steps by the Forward port's own
functions (:mod:`qwen_fluent.forward.compression`), under the same
``max_decompressed_bytes``; any other encoding (``snappy``) is answered 415.

Time and metadata: Fluent Bit's JSON formats put the event time first in each
object under ``json_date_key`` (``date`` by default) as a double, an integer
(``epoch``, ``epoch_ms``) or a string (``iso8601``, ``java_sql_timestamp``);
that key is taken out of the record and becomes the entry's time, so a record
reads as it would have over Forward. ``__internal__`` (Fluent Bit's metadata
and group attributes) is taken out too and becomes the entry's metadata.

The tag, as Fluent Bit's ``http`` input makes it: the URI path without its
leading ``/``, every character other than a letter, digit, ``_`` or ``.``
replaced by ``_`` (``/llm/inference`` is ``llm_inference``); ``/`` alone
gives :attr:`HTTPInputConfig.default_tag`. A ``tag_header`` (Fluent Bit
``header_tag``), when configured and present, wins: that is how the real tag
of each chunk (``kube.var.log.containers...``) crosses an ``http`` output,
whose URI is fixed.

The delivery contract is in the status codes, and matches what Fluent Bit's
``http`` output does with each (it retries 408, 429 and 5xx, drops other 4xx):

- ``200``: every record of the body was handed to the sink (counted as
  accepted, unrecognised or invalid, as over Forward). The body says how many:
  ``{"records": n, "accepted": a, "unrecognised": u, "invalid": i}``.
- ``400``: the payload can never succeed (bad JSON or msgpack, a decoding
  limit); retrying it is pointless. ``413``: the body is larger than
  ``max_body_bytes`` (or expands past ``max_decompressed_bytes``). ``415``: an
  unknown ``Content-Type`` or ``Content-Encoding``. ``405``: not POST or PUT.
- ``401`` (no credentials) and ``403`` (wrong ones) when a shared secret is set:
  ``Authorization: Bearer <secret>``, or Basic auth whose password is the
  secret (Fluent Bit ``http_user``/``http_passwd``).
- ``503`` with ``Retry-After``: the receiver is stopping, or the bodies being
  received at once would pass ``max_inflight_bytes`` (backpressure). Nothing
  of that request was taken; the client sends it again.

Duplicates: a client that sends an ``Idempotency-Key`` header (the IETF
httpapi draft) and resends after a lost response gets the first answer again
(with ``"duplicate": true``) and its records are not counted twice; the last
:attr:`HTTPLimits.idempotency_keys` keys are remembered.

The connection runs on the receiver's event loop, the loop the metrics sink is
fed on, with h11 as the HTTP/1.1 parser (sans-IO, like the Forward core): the
sink and :class:`~qwen_fluent.stats.ReceiverStats` see exactly what they see
from a Forward connection. Each body is decoded and handed to the sink in one
go on the loop, so only one decode is ever in progress; see
:class:`HTTPLimits` for every bound.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import h11
import msgpack
import msgspec

from ..forward import Entry, ForwardError, Limits, Message, Mode, decode_packed
from ..forward.compression import gunzip, unzstd
from ..forward.errors import DecompressedTooLarge
from ..stats import ReceiverStats
from .forward import ServerConfig

log = logging.getLogger("qwen_fluent.server.http_input")

Sink = Callable[[Message], None]

KiB = 1024
MiB = 1024 * KiB

#: ``ReceiverStats.messages`` key for one request body taken (beside the Forward modes).
MODE_HTTP = "http"

#: ``ReceiverStats.errors`` reasons: every refused request is counted under one.
BAD_REQUEST = "http_bad_request"  # not HTTP/1.1 a parser accepts (h11 refused it)
BAD_PAYLOAD = "http_bad_payload"  # a body that can never be decoded (400)
TOO_LARGE = "http_too_large"  # 413, and 431 for headers
UNSUPPORTED = "http_unsupported"  # 405, 415
UNAUTHORIZED = "http_unauthorized"  # 401: no credentials
FORBIDDEN = "http_forbidden"  # 403: wrong credentials
BACKPRESSURE = "http_backpressure"  # 503: in-flight budget full
STOPPING = "http_stopping"  # 503: shutting down
IDLE_TIMEOUT = "http_idle_timeout"
REQUEST_TIMEOUT = "http_request_timeout"
SINK_FAILED = "http_sink_failed"  # 500
REFUSED_SOURCE = "http_address_limit"  # per-address connection limit

#: Reasons an entry of a body is counted invalid (``Message.invalid``).
INVALID_NOT_OBJECT = "not_an_object"
INVALID_JSON_LINE = "bad_json_line"

#: msgspec decodes JSON two to three times faster than json.loads (as in
#: :mod:`qwen_fluent.records.lines`). Where it refuses a document (NaN, which
#: Python's json writes; lone surrogates; objects one after another),
#: json.loads decides, so what is accepted is exactly what json.loads accepts.
_fast_json = msgspec.json.Decoder().decode

_JSON_TYPES = frozenset({"application/json", "text/json", "text/plain"})
_NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                           "application/json-lines", "application/jsonlines", "application/x-jsonlines"})
_MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})

#: Seconds a connection closed in the middle of a request body keeps reading (and dropping)
#: input, so that the client sees our reply instead of a reset. nginx lingers up to 30 s
#: (``lingering_time``) in steps of 5 s; 2 s is enough for a client on a working network
#: to read a short reply, and bounds what a refused client costs us.
LINGER = 2.0

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
            415: b"Unsupported Media Type", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}


class HTTPInputError(Exception):
    """A request refused with an HTTP status; ``reason`` is the ReceiverStats.errors key."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class HTTPLimits:
    """Every bound the HTTP input puts on what a client can make it hold, each with its reason.

    Memory: bodies being received are at most :attr:`max_inflight_bytes` in
    all (one more is answered 503, the client retries), and one body at a
    time is decompressed and decoded, on the event loop. Decoding JSON costs
    about 20 times its size at worst (``[],`` is 3 bytes and a 64-byte list),
    so the worst single decode is about 20 x ``max_decompressed_bytes``, the
    same order as a Forward message (see :mod:`qwen_fluent.forward.limits`).
    """

    #: Largest body as sent (compressed or not). Same as the Forward port's
    #: ``max_message_bytes`` (8 MiB): a Fluent Bit chunk is about 2 MB of
    #: msgpack, and about twice that as JSON.
    max_body_bytes: int = 8 * MiB
    #: Largest body after gunzip; the Forward port's ``max_decompressed_bytes``.
    max_decompressed_bytes: int = 8 * MiB
    #: Request line and headers together. h11's own default (16 KiB) and
    #: about nginx's (8 KiB per line, 4 lines); a Fluent Bit request's headers
    #: are a few hundred bytes.
    max_header_bytes: int = 16 * KiB
    #: Body bytes being received at once over all connections; a request that
    #: would pass it gets 503 and ``Retry-After``. 64 MiB is 8 maximal bodies,
    #: or 32 Fluent Bit chunks in flight at once.
    max_inflight_bytes: int = 64 * MiB
    #: Connections open at once; the Forward port's ``max_connections`` (256).
    max_connections: int = 256
    #: Connections open at once from one client address, so that one client
    #: cannot take every slot. Fluent Bit opens one per output worker (2 by
    #: default) and keeps a few alive; 32 is generous.
    max_connections_per_address: int = 32
    #: Seconds a connection may stay silent (between requests, or inside
    #: one). Fluent Bit closes idle keepalive connections after 30 s
    #: (``net.keepalive_idle_timeout``); nginx waits 75 s (``keepalive_timeout``).
    idle_timeout: float = 75.0
    #: Seconds from a request's first byte to its last: a client trickling
    #: bytes under the idle timeout (slow loris) is cut off here (408). Fluent
    #: Bit gives up on a response after 60 s (``http.response_timeout``).
    request_timeout: float = 60.0
    #: ``Idempotency-Key`` values remembered (with their answers, ~200 bytes
    #: each, so ~2 MB). 10k keys cover minutes of a busy node's retries.
    idempotency_keys: int = 10_000
    #: Seconds a 503 asks the client to wait (``Retry-After``).
    retry_after: int = 1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"http_input.{field.name} must be a positive number, got {value!r}")


@dataclasses.dataclass
class HTTPInputConfig:
    """Where the HTTP input listens, how it authenticates, and its limits."""

    host: str = "0.0.0.0"
    #: 9880: Fluent Bit's ``http`` input's default port. ``0`` picks a free one.
    port: int = 9880
    #: PEM certificate chain and key (the Forward port's, by default in the config file).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: PEM CA bundle: require and verify client certificates.
    tls_client_ca: str | None = None
    #: Shared secret: ``Authorization: Bearer <secret>`` or Basic auth with it
    #: as the password; ``None`` accepts anyone.
    secret: str | None = None
    #: With Basic auth, the user name that must come with the secret (any, if ``None``).
    username: str | None = None
    #: The tag of a request to ``/`` (Fluent Bit's ``http`` input: the instance name).
    default_tag: str = "http.0"
    #: A header whose value is the tag (Fluent Bit ``header_tag``); ``None``: the URI path only.
    tag_header: str | None = "X-Fluent-Tag"
    #: The key Fluent Bit's JSON formats put the event time under (``json_date_key``); ``None``: none.
    date_key: str | None = "date"
    limits: HTTPLimits = dataclasses.field(default_factory=HTTPLimits)
    #: Decoding limits for msgpack bodies (the Forward port's ``[limits]``).
    decode_limits: Limits = dataclasses.field(default_factory=Limits)
    #: Seconds a stop waits for requests in flight; the Forward port's ``shutdown_grace``.
    shutdown_grace: float = 10.0
    #: Share the port with other processes (SO_REUSEPORT): ``serve --workers N``, as the Forward port.
    reuse_port: bool = False

    def ssl_context(self) -> Any:
        """The TLS context (the Forward port's rules: strict client-certificate checks), or ``None``."""
        return ServerConfig(tls_cert=self.tls_cert, tls_key=self.tls_key,
                            tls_client_ca=self.tls_client_ca).ssl_context()


def tag_from_path(target: bytes, default: str) -> str:
    """The tag Fluent Bit's ``http`` input gives a request to ``target`` (its query string ignored)."""
    path = target.split(b"?", 1)[0].decode("latin-1")
    if len(path) <= 1:
        return default
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_." else "_" for c in path[1:])


def parse_date(value: Any) -> float | None:
    """An event time from a Fluent Bit ``json_date_key`` value, in seconds; ``None`` if it is not one.

    Integers past 10^11 are milliseconds (``epoch_ms``): as seconds they would be
    past the year 5000. Strings are ``iso8601`` (``...T...Z``) or
    ``java_sql_timestamp`` (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC).
    """
    if type(value) is float:
        return value
    if type(value) is int:
        return value / 1000.0 if value > 100_000_000_000 else float(value)
    if isinstance(value, str) and 19 <= len(value) <= 40:
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.timestamp()
    return None


class BodyDecoder:
    """Turns one request body into a :class:`Message`: the part with no I/O, testable alone."""

    def __init__(self, config: HTTPInputConfig, defer_packed: bool) -> None:
        self.date_key = config.date_key
        self.limits = config.limits
        self.decode_limits = config.decode_limits
        self.defer_packed = defer_packed

    def decode(self, body: bytes, content_type: str, encoding: str, tag: str) -> Message:
        """Raise :class:`HTTPInputError` (400, 413, 415) for a body that cannot be taken."""
        if encoding in ("gzip", "x-gzip", "zstd"):
            unpack = unzstd if encoding == "zstd" else gunzip
            try:
                body = unpack(body, self.limits.max_decompressed_bytes)
            except DecompressedTooLarge as exc:
                raise HTTPInputError(413, TOO_LARGE, str(exc)) from None
            except ForwardError as exc:
                raise HTTPInputError(400, BAD_PAYLOAD, str(exc)) from None
        elif encoding not in ("", "identity"):
            raise HTTPInputError(415, UNSUPPORTED, f"Content-Encoding {encoding!r} is not supported (gzip and zstd are)")
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in _NDJSON_TYPES:
            return self._lines(body, tag)
        if mime in _MSGPACK_TYPES:
            return self._msgpack(body, tag)
        if mime in _JSON_TYPES or mime.endswith("+json") or mime == "":
            return self._json(body, tag)
        raise HTTPInputError(415, UNSUPPORTED, f"Content-Type {mime!r} is not supported "
                                               "(application/json, application/x-ndjson, application/msgpack)")

    # -- JSON ---------------------------------------------------------------------------

    def _json(self, body: bytes, tag: str) -> Message:
        try:  # the common case: one document (Fluent Bit format json: one array)
            whole = _fast_json(body)
        except (ValueError, RecursionError):
            pass
        else:
            values = whole if type(whole) is list else [whole]
            if not values:
                raise HTTPInputError(400, BAD_PAYLOAD, "body holds no record")
            return self._message(values, {}, tag, len(body))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPInputError(400, BAD_PAYLOAD, f"body is not UTF-8: {exc}") from None
        values: list[Any] = []
        decoder = json.JSONDecoder()
        pos, end = 0, len(text)
        try:
            while True:
                while pos < end and text[pos] in " \t\r\n":
                    pos += 1
                if pos >= end:
                    break
                value, pos = decoder.raw_decode(text, pos)
                if type(value) is list:
                    values.extend(value)
                else:
                    values.append(value)
        except (ValueError, RecursionError) as exc:
            raise HTTPInputError(400, BAD_PAYLOAD, f"body is not JSON: {exc}") from None
        if not values:
            raise HTTPInputError(400, BAD_PAYLOAD, "body holds no record")
        return self._message(values, {}, tag, len(body))

    def _lines(self, body: bytes, tag: str) -> Message:
        values: list[Any] = []
        invalid: dict[str, int] = {}
        fast, loads = _fast_json, json.loads
        for line in body.split(b"\n"):
            if not line.strip():
                continue
            try:
                values.append(fast(line))
            except (ValueError, RecursionError):
                try:
                    values.append(loads(line))
                except (ValueError, RecursionError):
                    invalid[INVALID_JSON_LINE] = invalid.get(INVALID_JSON_LINE, 0) + 1
        if not values:
            raise HTTPInputError(400, BAD_PAYLOAD, "no line of the body is JSON" if invalid else "body holds no record")
        return self._message(values, invalid, tag, len(body))

    def _message(self, values: list[Any], invalid: dict[str, int], tag: str, nbytes: int) -> Message:
        now = time.time()
        date_key = self.date_key
        entries: list[Entry] = []
        for value in values:
            if type(value) is not dict:
                invalid[INVALID_NOT_OBJECT] = invalid.get(INVALID_NOT_OBJECT, 0) + 1
                continue
            when = now
            if date_key is not None and date_key in value:
                parsed = parse_date(value[date_key])
                if parsed is not None:
                    when = parsed
                    del value[date_key]
            meta = value.pop("__internal__", None) if "__internal__" in value else None
            entries.append(Entry(when, value, meta if isinstance(meta, dict) else None))
        return Message(tag, entries, Mode.FORWARD, None, {}, nbytes, invalid)

    # -- msgpack --------------------------------------------------------------------------

    def _msgpack(self, body: bytes, tag: str) -> Message:
        if not body:
            raise HTTPInputError(400, BAD_PAYLOAD, "body holds no record")
        first = body[0]
        if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):  # a map: bare records, one after another
            return self._msgpack_maps(body, tag)
        message = Message(tag, [], Mode.PACKED_FORWARD, None, {}, len(body), {}, body)
        if self.defer_packed:
            return message  # the metrics sink decodes it on its typed fast path
        try:
            return decode_packed(message, self.decode_limits)
        except ForwardError as exc:
            raise HTTPInputError(400, BAD_PAYLOAD, f"msgpack body refused: {exc}") from None

    def _msgpack_maps(self, body: bytes, tag: str) -> Message:
        lim = self.decode_limits
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(body),
                                    max_str_len=lim.max_str_bytes, max_bin_len=lim.max_str_bytes,
                                    max_array_len=lim.max_array_len, max_map_len=lim.max_map_len,
                                    max_ext_len=lim.max_ext_bytes)
        unpacker.feed(body)
        try:
            values = list(unpacker)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise HTTPInputError(400, BAD_PAYLOAD, f"body is not msgpack: {exc}") from None
        if unpacker.tell() != len(body):
            raise HTTPInputError(400, BAD_PAYLOAD, "msgpack body ends in the middle of a value")
        return self._message(values, {}, tag, len(body))


class _Reply:
    """What to answer one request: status, body, extra headers, and whether to close after it."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(self, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None,
                 close: bool = False) -> None:
        self.status = status
        self.body = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        self.headers = headers or []
        self.close = close


class _Idempotency:
    """The answers of the last ``size`` requests that carried an ``Idempotency-Key`` (LRU)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[bytes, dict[str, Any]] = OrderedDict()

    def get(self, key: bytes) -> dict[str, Any] | None:
        answer = self._seen.get(key)
        if answer is not None:
            self._seen.move_to_end(key)
        return answer

    def put(self, key: bytes, answer: dict[str, Any]) -> None:
        self._seen[key] = answer
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)


class _HTTPProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: h11 parses, the sink takes each whole body, then the reply goes back."""

    def __init__(self, server: HTTPInputServer, transport_name: str) -> None:
        self.server = server
        self.transport_name = transport_name
        self.transport: asyncio.Transport | None = None
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server.config.limits.max_header_bytes)
        self.peer = "?"
        self.source = "?"
        self.closing = False
        self._idle: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._request: h11.Request | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._reserved = 0  # bytes of the in-flight budget this request holds
        self._refusal: HTTPInputError | None = None  # decided on the headers, answered when the body ends
        self.reading_paused = False

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) else "unix"
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        limits = server.config.limits
        if len(server.connections) >= limits.max_connections or server.stopping:
            server.stats.connections_refused += 1
            log.warning("refusing HTTP connection from %s: %d connections open (limit)", self.peer,
                        len(server.connections))
            transport.abort()
            return
        if server.per_address.get(self.source, 0) >= limits.max_connections_per_address:
            server.stats.connections_refused += 1
            server.stats.errors[REFUSED_SOURCE] += 1
            log.warning("refusing HTTP connection from %s: %d connections open from that address (limit)",
                        self.peer, limits.max_connections_per_address)
            transport.abort()
            return
        server.connections.add(self)
        server.per_address[self.source] = server.per_address.get(self.source, 0) + 1
        server.stats.connections_opened[self.transport_name] += 1
        server.stats.connections_active += 1
        self._idle = asyncio.get_running_loop().call_later(limits.idle_timeout, self._on_idle)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.server.stats.bytes_received += len(data)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = asyncio.get_running_loop().call_later(self.server.config.limits.idle_timeout, self._on_idle)
        if self._deadline is None and self._request is None:
            self._deadline = asyncio.get_running_loop().call_later(
                self.server.config.limits.request_timeout, self._on_deadline)
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        if not self.closing:
            self.conn.receive_data(b"")
            self._process()
        return False

    def pause_writing(self) -> None:
        """The client does not read our replies: stop reading its requests (bounds the write buffer)."""
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_writing(self) -> None:
        if self.transport is not None and self.reading_paused and not self.closing:
            self.transport.resume_reading()
        self.reading_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._idle, self._deadline):
            if timer is not None:
                timer.cancel()
        self._release()
        server = self.server
        if self in server.connections:
            server.connections.discard(self)
            left = server.per_address.get(self.source, 1) - 1
            if left:
                server.per_address[self.source] = left
            else:
                server.per_address.pop(self.source, None)
            server.stats.connections_active -= 1
            server.connection_closed()

    # -- the work --------------------------------------------------------------

    def _process(self) -> None:
        conn = self.conn
        while not self.closing:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                reason = TOO_LARGE if status in (413, 431) else BAD_REQUEST
                self._refuse(HTTPInputError(status, reason, str(exc)), close=True)
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_data(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._on_end()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _on_request(self, request: h11.Request) -> None:
        self._request = request
        self._body = []
        self._size = 0
        self._refusal = None
        server = self.server
        limits = server.config.limits
        headers = {name: value for name, value in request.headers}
        size = len(request.target) + sum(len(name) + len(value) + 4 for name, value in request.headers)
        if size > limits.max_header_bytes:
            # h11 bounds headers that arrive in pieces; ones that came in one read are checked here.
            self._refuse(HTTPInputError(431, TOO_LARGE, f"headers of {size} bytes are past the limit of "
                                                        f"{limits.max_header_bytes}"), close=True)
            return
        try:
            if server.stopping:
                raise HTTPInputError(503, STOPPING, "the receiver is stopping")
            server.authorize(headers.get(b"authorization"))
            if request.method not in (b"POST", b"PUT"):
                raise HTTPInputError(405, UNSUPPORTED, f"method {request.method.decode()} (POST or PUT a body)")
            length = headers.get(b"content-length")
            want = int(length) if length is not None else 0
            if want > limits.max_body_bytes:
                raise HTTPInputError(413, TOO_LARGE, f"body of {want} bytes is past the limit of "
                                                     f"{limits.max_body_bytes}")
            if not server.reserve(want):
                raise HTTPInputError(503, BACKPRESSURE, "bodies in flight are at max_inflight_bytes")
            self._reserved = want
        except HTTPInputError as exc:
            if exc.status == 413 or self.conn.they_are_waiting_for_100_continue:
                # Never read a body that large; and a client that waits for "100 Continue"
                # (curl, for large bodies) has not sent it: answer now, then close.
                self._refuse(exc, close=True)
            else:
                # Read the body without keeping it and answer at its end, so that the
                # client reads the answer (no reset) and the connection stays usable.
                self._refusal = exc
            return
        if self.conn.they_are_waiting_for_100_continue and self.transport is not None:
            self.transport.write(self.conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))

    def _on_data(self, data: bytes) -> None:
        self._size += len(data)
        limits = self.server.config.limits
        if self._size > limits.max_body_bytes:
            self._refusal = None
            self._release()
            self._refuse(HTTPInputError(413, TOO_LARGE, f"body past the limit of {limits.max_body_bytes} bytes"),
                         close=True)
            return
        if self._refusal is not None:
            return  # discarded: the answer is already decided
        if self._size > self._reserved:  # chunked: take budget as the body comes
            more = self._size - self._reserved
            if not self.server.reserve(more):
                self._release()
                self._body = []
                self._refusal = HTTPInputError(503, BACKPRESSURE, "bodies in flight are at max_inflight_bytes")
                return
            self._reserved += more
        self._body.append(data)

    def _on_end(self) -> None:
        request = self._request
        assert request is not None
        server = self.server
        if self._refusal is not None:
            refusal, self._refusal = self._refusal, None
            self._refuse(refusal, close=False)
            return
        headers = {name: value for name, value in request.headers}
        key = headers.get(b"idempotency-key")
        body = b"".join(self._body)
        self._body = []
        if key is not None:
            earlier = server.idempotency.get(key)
            if earlier is not None:
                self._release()
                self._send(_Reply(200, {**earlier, "duplicate": True}))
                return
        tag = server.tag(request.target, headers)
        try:
            message = server.decoder.decode(body, headers.get(b"content-type", b"").decode("latin-1"),
                                            headers.get(b"content-encoding", b"").decode("latin-1").strip().lower(),
                                            tag)
            answer = server.take(message)
        except HTTPInputError as exc:
            self._release()
            self._refuse(exc, close=False)
            return
        except Exception:
            self._release()
            log.exception("sink failed on a request from %s; answering 500 so it is resent", self.peer)
            self._refuse(HTTPInputError(500, SINK_FAILED, "the receiver failed to take the records"), close=True)
            return
        self._release()
        if key is not None:
            server.idempotency.put(key, answer)
        self._send(_Reply(200, answer))

    def _refuse(self, exc: HTTPInputError, close: bool) -> None:
        stats = self.server.stats
        stats.errors[exc.reason] += 1
        if exc.reason in (UNAUTHORIZED, FORBIDDEN):
            stats.auth_failures[exc.reason] += 1
        level = logging.DEBUG if exc.reason in (BACKPRESSURE, STOPPING) else logging.WARNING
        log.log(level, "HTTP %d to %s: %s", exc.status, self.peer, exc)
        headers: list[tuple[bytes, bytes]] = []
        if exc.status == 503:
            headers.append((b"Retry-After", str(self.server.config.limits.retry_after).encode()))
        elif exc.status == 401:
            headers.append((b"WWW-Authenticate", b'Bearer realm="qwen-fluent", Basic realm="qwen-fluent"'))
        self._send(_Reply(exc.status, {"error": str(exc)}, headers, close=close))

    def _send(self, reply: _Reply) -> None:
        conn = self.conn
        transport = self.transport
        if transport is None or self.closing:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._request = None
        close = reply.close or self.server.stopping
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(reply.body)).encode()),
                   *reply.headers]
        if close:
            headers.append((b"Connection", b"close"))
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._close()
            return
        try:
            out = conn.send(h11.Response(status_code=reply.status, headers=headers,
                                         reason=_REASONS.get(reply.status, b"")))
            out += conn.send(h11.Data(data=reply.body)) + conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._close()
            return
        transport.write(out)
        if close or conn.our_state is h11.MUST_CLOSE:
            self._close()

    def _release(self) -> None:
        if self._reserved:
            self.server.release(self._reserved)
            self._reserved = 0

    def _close(self) -> None:
        """Close after the pending reply is written; if the client is still sending, linger first.

        Closing a socket with unread input makes the kernel send a reset, which
        can destroy the reply before the client reads it (a 413 sent while a
        large body is still arriving). So, as nginx's ``lingering_close`` does,
        our side is shut down for writing and input is read and dropped for
        at most :data:`LINGER` seconds, or until the client closes.
        """
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._release()
        transport = self.transport
        if self.conn.their_state in (h11.SEND_BODY, h11.ERROR) and transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER, transport.close)
        else:
            transport.close()  # writes the pending reply first

    def _on_idle(self) -> None:
        self.server.stats.errors[IDLE_TIMEOUT] += 1
        log.debug("closing HTTP connection from %s: no data for %g s", self.peer,
                  self.server.config.limits.idle_timeout)
        self._close()

    def _on_deadline(self) -> None:
        self._deadline = None
        limits = self.server.config.limits
        exc = HTTPInputError(408, REQUEST_TIMEOUT, f"request not complete within {limits.request_timeout:g} s")
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self.conn.their_state is not h11.DONE:
            self._release()
            self._refuse(exc, close=True)
        else:
            self.server.stats.errors[REQUEST_TIMEOUT] += 1
            self._close()

    def drain(self) -> None:
        """Shutdown: close now unless a request is being received (it gets its answer first)."""
        if self._request is None:
            self._close()


class HTTPInputServer:
    """Listens for HTTP requests and hands each body's records to ``sink`` as one :class:`Message`.

    ``defer_packed``: the sink decodes msgpack bodies itself (the metrics
    sink's typed fast path), as :class:`~qwen_fluent.server.ForwardServer`'s.
    """

    def __init__(self, config: HTTPInputConfig, sink: Sink, stats: ReceiverStats | None = None,
                 defer_packed: bool = False) -> None:
        self.config = config
        self.sink = sink
        self.stats = stats if stats is not None else ReceiverStats()
        self.decoder = BodyDecoder(config, defer_packed)
        self.idempotency = _Idempotency(config.limits.idempotency_keys)
        self.connections: set[_HTTPProtocol] = set()
        self.per_address: dict[str, int] = {}
        self.inflight = 0
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._all_closed: asyncio.Event | None = None
        self._secret = config.secret.encode() if config.secret else None
        self._tag_header = config.tag_header.lower().encode() if config.tag_header else None

    @property
    def port(self) -> int | None:
        if self._server is None:
            return None
        for sock in self._server.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                return int(name[1])
        return None

    async def start(self) -> None:
        """Bind the port. Raises ``OSError`` (port in use) or ``ssl.SSLError`` (bad certificate files)."""
        context = self.config.ssl_context()
        name = "https" if context else "http"
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _HTTPProtocol(self, name), self.config.host, self.config.port, ssl=context, reuse_address=True,
            reuse_port=self.config.reuse_port or None)
        log.info("listening for HTTP records on %s://%s:%d", name, self.config.host, self.port)

    # -- used by the connections ----------------------------------------------------------

    def authorize(self, header: bytes | None) -> None:
        """Raise 401 without credentials, 403 with wrong ones; pass when no secret is set."""
        secret = self._secret
        if secret is None:
            return
        if not header:
            raise HTTPInputError(401, UNAUTHORIZED, "no Authorization header (Bearer or Basic)")
        scheme, _, value = header.strip().partition(b" ")
        scheme = scheme.lower()
        given, user = b"", None
        if scheme == b"bearer":
            given = value.strip()
        elif scheme == b"basic":
            try:
                user, _, given = base64.b64decode(value.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                raise HTTPInputError(403, FORBIDDEN, "Basic credentials are not base64") from None
        else:
            raise HTTPInputError(401, UNAUTHORIZED, f"Authorization scheme {scheme.decode('latin-1')!r} "
                                                    "(Bearer or Basic)")
        good = hmac.compare_digest(given, secret)
        if user is not None and self.config.username is not None:
            good = hmac.compare_digest(user, self.config.username.encode()) and good
        if not good:
            raise HTTPInputError(403, FORBIDDEN, "wrong credentials")

    def tag(self, target: bytes, headers: dict[bytes, bytes]) -> str:
        if self._tag_header is not None:
            value = headers.get(self._tag_header)
            if value:
                return value.decode("utf-8", "replace")
        return tag_from_path(target, self.config.default_tag)

    def reserve(self, nbytes: int) -> bool:
        """Take ``nbytes`` of the in-flight budget, or say no (the request is answered 503)."""
        if self.inflight + nbytes > self.config.limits.max_inflight_bytes:
            return False
        self.inflight += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.inflight -= nbytes

    def take(self, message: Message) -> dict[str, Any]:
        """Hand one body's records to the sink and count them; return what the client is told."""
        stats = self.stats
        records = stats.records
        before = (records["accepted"], records["unrecognised"], records["invalid"])
        try:
            self.sink(message)
        except ForwardError as exc:  # a msgpack body the sink's decoder refused: nothing was counted
            raise HTTPInputError(400, BAD_PAYLOAD, f"msgpack body refused: {exc}") from None
        stats.messages[MODE_HTTP] += 1
        if message.invalid:
            records["invalid"] += sum(message.invalid.values())
        markers = getattr(message, "group_markers", 0)  # Fluent Bit group start/end entries the decoder skipped
        if markers:
            records["group_marker"] += markers
        accepted = records["accepted"] - before[0]
        unrecognised = records["unrecognised"] - before[1]
        invalid = records["invalid"] - before[2]
        return {"records": accepted + unrecognised + invalid, "accepted": accepted,
                "unrecognised": unrecognised, "invalid": invalid}

    def connection_closed(self) -> None:
        if self.stopping and not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; requests being received get ``grace`` seconds to finish and be answered.

        A request that arrives meanwhile on an open keep-alive connection is
        answered 503 (the client sends it again, to whoever serves next).
        """
        grace = self.config.shutdown_grace if grace is None else grace
        self.stopping = True
        self._all_closed = asyncio.Event()
        if self._server is not None:
            self._server.close()
        for protocol in list(self.connections):
            protocol.drain()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except asyncio.TimeoutError:
                for protocol in list(self.connections):
                    self.stats.errors[STOPPING] += 1
                    protocol.closing = True
                    if protocol.transport is not None:
                        protocol.transport.abort()
        for _ in range(3):
            await asyncio.sleep(0)
        self._server = None
