"""The server side of one Forward connection, as a sans-IO state machine.

Modelled on ``h11``: the object never touches a socket. The caller feeds it
the bytes it read (:meth:`ForwardConnection.receive_data`), pulls events until
it needs more (:meth:`ForwardConnection.next_event`), and writes whatever
:meth:`ForwardConnection.data_to_send` and :meth:`ForwardConnection.ack` give
back. That makes every case testable byte by byte, and keeps the asyncio
server a thin shell.

Typical use::

    conn = ForwardConnection(auth=None, limits=Limits())
    send(conn.data_to_send())            # the HELO, when auth is on
    conn.receive_data(bytes_read)        # b"" means the peer closed
    while True:
        event = conn.next_event()        # raises ForwardError on bad input
        if event is NEED_DATA or isinstance(event, EndOfStream):
            break
        if isinstance(event, Message):
            consume(event)               # hand the records on ...
            send(conn.ack(event))        # ... and only then acknowledge
        send(conn.data_to_send())        # PONG after a PING

An ack is built only on request, after the consumer has taken the records,
so a message that was rejected (its decoding raised) or that the consumer
failed to take is never acknowledged, and the client resends it.
"""

from __future__ import annotations

import enum
import itertools
import os
from typing import Any, Callable

import msgpack

from .decode import ObjectBudget, decode_message, translate_msgpack_error, unpacker_options
from .errors import (
    ConnectionClosedError,
    ForwardError,
    MessageTooLarge,
    TruncatedMessage,
    UnauthenticatedTooLarge,
)
from .events import (
    NEED_DATA,
    AuthFailed,
    AuthSucceeded,
    EndOfStream,
    Event,
    Heartbeat,
    Message,
    SkippedMessage,
    _NeedData,
)
from .handshake import AuthConfig, ServerHandshake
from .limits import Limits
from .sniff import HEAD_BYTES, check_frame, sniff_protocol

#: A message larger than this, once decoded, makes the connection start a new
#: msgpack buffer (see _next_object): 1 MiB, so that Fluent Bit's usual small
#: chunks keep theirs and only large ones pay the (tiny) cost.
_RELEASE_AFTER = 1024 * 1024

#: How much of the pending input is handed to msgpack at a time. Feeding in
#: steps keeps msgpack's own buffer (and so memory) bounded however much the
#: caller passes to receive_data in one call.
_FEED_STEP = 256 * 1024


#: The options of a message framed directly (:meth:`ForwardConnection._direct`) are read from at most
#: this many bytes; longer ones (never seen: chunk, size, compressed and fluent_signal take ~60) go
#: the general way, which bounds them by the Limits as any other value.
_MAX_DIRECT_OPTIONS = 4096

#: Lengths of a str or bin header by its first byte: (bytes of length, kind).
_STR_HEADS = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN_HEADS = {0xC4: 1, 0xC5: 2, 0xC6: 4}
#: Waiting for more bytes of a directly framed message.
_WAIT = object()


def _length(buf: bytearray, pos: int, width: int) -> int:
    return int.from_bytes(buf[pos:pos + width], "big")


def _packed_frame(buf: bytearray, limits: Limits, eof: bool) -> tuple[int, int, int, int] | object | None:
    """Where the tag and the payload of the PackedForward message at the start of ``buf`` lie:
    ``(tag_start, tag_end, payload_start, payload_end)``; :data:`_WAIT` while its header or payload has
    not all arrived; ``None`` for any other shape, or one a limit refuses (the general path reads those,
    and raises what it raises). The shape: a 3-array, a str tag, a bin payload (Fluent Bit's, Fluentd's).
    """
    n = len(buf)
    if buf[0] != 0x93 or limits.max_array_len < 3:
        return None
    if n < 2:
        return None if eof else _WAIT
    b = buf[1]
    if 0xA0 <= b <= 0xBF:
        tag_start, tag_len = 2, b & 0x1F
    else:
        width = _STR_HEADS.get(b)
        if width is None:
            return None
        if n < 2 + width:
            return None if eof else _WAIT
        tag_start, tag_len = 2 + width, _length(buf, 2, width)
    tag_end = tag_start + tag_len
    if tag_len > limits.max_str_bytes:
        return None
    if n < tag_end + 1:
        return None if eof else _WAIT
    width = _BIN_HEADS.get(buf[tag_end])
    if width is None:
        return None
    if n < tag_end + 1 + width:
        return None if eof else _WAIT
    payload_start = tag_end + 1 + width
    payload_len = _length(buf, tag_end + 1, width)
    payload_end = payload_start + payload_len
    if payload_len > limits.max_str_bytes or payload_end >= limits.max_message_bytes:
        return None
    if n <= payload_end:  # the payload and at least the options' first byte
        return None if eof else _WAIT
    return tag_start, tag_end, payload_start, payload_end


class State(enum.Enum):
    """Where a connection is: waiting for PING (auth on), open for data, or closed."""

    AWAITING_PING = "awaiting_ping"
    OPEN = "open"
    CLOSED = "closed"


#: Connection numbers, unique within the process (``Message.connection``).
_connection_ids = itertools.count(1)


class ForwardConnection:
    """The receiving side of one Forward connection (TCP, TLS or Unix socket)."""

    #: Read PackedForward messages of the usual shape straight from the pending bytes (:meth:`_direct`);
    #: ``False`` reads every message through msgpack's stream, the reference the tests compare it with.
    direct_framing = True

    def __init__(
        self,
        auth: AuthConfig | None = None,
        limits: Limits | None = None,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        defer_packed: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        #: This connection's number, unique within the process: the server stamps it on every
        #: Message it hands on (``Message.connection``), so consumers can tell connections apart.
        self.id = next(_connection_ids)
        #: Leave PackedForward entries undecoded (``Message.payload``) for a
        #: consumer with its own typed decoder; see ``decode_packed``.
        self.defer_packed = defer_packed
        self._budget = ObjectBudget(self.limits.max_objects)
        self._unpacker = self._new_unpacker()
        self._base = 0  # stream offset where the current unpacker's input began (its tell() counts from here)
        #: No message this small can break a size limit, authenticated or not.
        self._small_limit = min(self.limits.max_message_bytes, self.limits.max_unauthenticated_bytes)
        self._pending = bytearray()  # received, not yet fed to msgpack
        self._fed = 0  # total bytes fed to msgpack
        self._message_start = 0  # stream offset where the current message began
        self._eof = False
        # The last step fed to msgpack and its stream offset, and the first
        # bytes of the message being received (see _check_head).
        self._step = b""
        self._step_at = 0
        self._head = b""
        self._head_start = -1
        self._head_done = False
        self._sniffed = False
        self._out = bytearray()
        self._handshake: ServerHandshake | None = None
        self.peer_hostname = ""
        self.peer_username = ""
        if auth is not None:
            self._handshake = ServerHandshake(auth, random_bytes(16), random_bytes(16))
            self._out += self._handshake.helo()
            self.state = State.AWAITING_PING
        else:
            self.state = State.OPEN

    def _new_unpacker(self) -> msgpack.Unpacker:
        return msgpack.Unpacker(
            max_buffer_size=self.limits.max_message_bytes + _FEED_STEP,
            **unpacker_options(self.limits, self._budget),
        )

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed its side."""
        if self.state is State.CLOSED:
            if data:
                raise ConnectionClosedError("data received after the connection was closed")
            return
        if data:
            if self._eof:
                raise ConnectionClosedError("data received after end of stream")
            self._pending += data
        else:
            self._eof = True

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a whole message (0 between messages)."""
        return self._fed - self._message_start + len(self._pending)

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or :data:`NEED_DATA` if a whole message has not arrived.

        Raises a :class:`~.errors.ForwardError` if the input breaks the
        protocol or a limit; the connection is then closed and must not be used.
        """
        if self.state is State.CLOSED:
            return EndOfStream()
        try:
            obj, nbytes = self._next_object()
        except ForwardError:
            self.state = State.CLOSED
            raise
        if obj is NEED_DATA:
            return NEED_DATA
        if obj is _END:
            self.state = State.CLOSED
            return EndOfStream()
        try:
            return self._dispatch(obj, nbytes)
        except ForwardError:
            self.state = State.CLOSED
            raise
        finally:
            # The next message starts with the whole object budget.
            self._budget.reset()

    def _message_limit(self) -> tuple[int, type[ForwardError]]:
        """The most bytes the current message may have, and what exceeding it raises."""
        if self.state is State.AWAITING_PING:
            return self.limits.max_unauthenticated_bytes, UnauthenticatedTooLarge
        return self.limits.max_message_bytes, MessageTooLarge

    def _check_head(self, limit: int, too_large: type[ForwardError]) -> None:
        """Check the declared lengths at the start of the message being received (:func:`check_frame`).

        Runs when msgpack needs more bytes, before the next step is fed, so a
        header declaring more than a limit is refused with at most one step
        (256 KiB) of its body buffered. Keeps the first :data:`HEAD_BYTES`
        bytes of the message from the steps fed so far; every step is fed
        right after this ran, so none is missed.
        """
        start = self._message_start
        if self._head_start != start:
            self._head_start = start
            self._head = b""
            self._head_done = False
        if self._head_done:
            return
        have = start + len(self._head)  # stream offset the kept head reaches
        if have < self._fed and len(self._head) < HEAD_BYTES:
            lo = have - self._step_at
            self._head += self._step[lo: lo + HEAD_BYTES - len(self._head)]
        head = self._head
        if len(head) < HEAD_BYTES and self._pending:
            head += bytes(self._pending[: HEAD_BYTES - len(head)])
        check_frame(head, self.limits, limit, too_large)
        if len(self._head) >= HEAD_BYTES:
            self._head_done = True

    def _direct(self) -> tuple[Any, int] | None:
        """The next message read straight from the pending bytes, when it is a PackedForward message of the
        usual shape (:func:`_packed_frame`); ``None`` to read it the general way.

        The general way copies each payload byte several times (into msgpack's buffer step by step,
        then into the bin object): 0.58 us a kubernetes record in ``serve``. Here the payload is
        copied once, when it has all arrived; the options go through msgpack with the same settings
        and object budget. The result is the list msgpack would have built, of the same size, so
        everything after (:func:`decode_message`) is the same code. Only between messages, with
        nothing fed to msgpack that it has not consumed, and on an open connection.
        """
        self._budget.reset()  # between messages it is whole; an attempt that waited or gave up used some
        pending = self._pending
        frame = _packed_frame(pending, self.limits, self._eof)
        if frame is None:
            return None
        if frame is _WAIT:
            return NEED_DATA, 0
        tag_start, tag_end, payload_start, payload_end = frame  # type: ignore[misc]
        window = bytes(memoryview(pending)[payload_end:payload_end + _MAX_DIRECT_OPTIONS])
        unpacker = msgpack.Unpacker(max_buffer_size=_MAX_DIRECT_OPTIONS, **unpacker_options(self.limits, self._budget))
        unpacker.feed(window)
        try:
            options = unpacker.unpack()
        except msgpack.OutOfData:
            if len(window) < _MAX_DIRECT_OPTIONS and not self._eof:
                return NEED_DATA, 0
            return None
        except ForwardError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise translate_msgpack_error(exc) from None
        total = payload_end + unpacker.tell()
        if total > self.limits.max_message_bytes:
            return None
        obj = self._budget.hook([bytes(pending[tag_start:tag_end]).decode("utf-8", "surrogateescape"),
                                 bytes(memoryview(pending)[payload_start:payload_end]), options])
        del pending[:total]
        self._fed += total
        self._message_start += total
        self._base += total  # msgpack's tell() did not move: its stream offset now starts further on
        self._sniffed = True  # a Forward message first: neither HTTP nor TLS
        return obj, total

    def _next_object(self) -> tuple[Any, int]:
        if self._pending and self.state is State.OPEN and self._fed == self._message_start and self.direct_framing:
            direct = self._direct()
            if direct is not None:
                return direct
        unpacker = self._unpacker
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                limit, too_large = self._message_limit()
                if self._fed - self._message_start > limit:
                    raise too_large(f"message is larger than {limit} bytes") from None
                if not self._sniffed:
                    # The first bytes of the stream: an HTTP client or a TLS ClientHello is named as such.
                    if not sniff_protocol(bytes(self._pending[:16]), self._eof):
                        return NEED_DATA, 0
                    self._sniffed = True
                self._check_head(limit, too_large)
                if self._pending:
                    size = _FEED_STEP
                    if too_large is UnauthenticatedTooLarge:  # before the PING: never feed past the limit
                        size = min(size, limit + 1 - (self._fed - self._message_start))
                    step = bytes(memoryview(self._pending)[:size])  # one copy, not a slice and then a copy
                    del self._pending[:size]
                    unpacker.feed(step)
                    self._step = step
                    self._step_at = self._fed
                    self._fed += len(step)
                    continue
                if self._eof:
                    if self._fed > self._message_start:
                        raise TruncatedMessage(
                            f"stream closed {self._fed - self._message_start} bytes into a message"
                        ) from None
                    return _END, 0
                self._step = b""  # everything fed is consumed or kept in _head: the step is not needed
                return NEED_DATA, 0
            except ForwardError:
                raise  # the object budget's own error, raised from inside msgpack's hooks
            except Exception as exc:  # msgpack raises several unrelated types on bad input
                raise translate_msgpack_error(exc) from None
            end = self._base + unpacker.tell()
            nbytes = end - self._message_start
            self._message_start = end
            if nbytes > self._small_limit:  # only a large message, or any before the PING, looks further
                limit, too_large = self._message_limit()
                if nbytes > limit:
                    raise too_large(f"message of {nbytes} bytes is larger than {limit} bytes")
            if end == self._fed:
                self._step = b""  # the next message starts in bytes not fed yet: release the copy now
                if nbytes > _RELEASE_AFTER:
                    # msgpack's buffer grows to the largest message and never shrinks: a connection
                    # that once carried 8 MiB would hold 8 MiB while idle. Nothing is left in it, so a
                    # new one (about a microsecond) gives the memory back.
                    self._unpacker = unpacker = self._new_unpacker()
                    self._base = end
            return obj, nbytes

    def _dispatch(self, obj: Any, nbytes: int) -> Event:
        if self.state is State.AWAITING_PING:
            assert self._handshake is not None
            result = self._handshake.check_ping(obj)
            self._out += result.pong
            if not result.ok:
                self.state = State.CLOSED
                return AuthFailed(result.reason, result.hostname)
            self.state = State.OPEN
            self.peer_hostname = result.hostname
            self.peer_username = result.username
            return AuthSucceeded(result.hostname, result.username)
        if obj is None:
            return Heartbeat(nbytes)
        return decode_message(obj, nbytes, self.limits, self._budget, self.defer_packed)

    # -- output --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes the server owes the peer (HELO, PONG); empty when there are none."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def ack(self, message: Message | SkippedMessage) -> bytes:
        """The ack for ``message``, to send once its records were taken; ``b""`` if none was asked for.

        Packed as ``{"ack": <chunk>}`` with both as msgpack str: Fluent Bit
        treats a bin-typed ack as a failure and resends the chunk.
        """
        if message.chunk is None:
            return b""
        return _ACK_PACKER.pack({"ack": message.chunk})


class _End:
    __slots__ = ()


_END = _End()

# surrogateescape round-trips a chunk id that was not valid UTF-8 to its exact bytes.
_ACK_PACKER = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
