"""Looking at the first bytes of a stream and of a message, before msgpack buffers the rest.

Two checks that need only a few bytes and save the receiver from holding
many:

- :func:`sniff_protocol`, on the first bytes of a connection: a peer that
  speaks HTTP (``GET /``, ``POST /``, ...) or starts a TLS handshake (a
  ClientHello record, ``16 03 0x``) is named as such. In msgpack those bytes
  are positive integers, never a Forward message, so without this the peer
  would only be told "expected a Forward message array, got int".
- :func:`check_frame`, on the first bytes of a message that has not fully
  arrived: every str, bin, ext, array and map header among them is checked
  against :class:`~.limits.Limits` at once. msgpack itself checks array and
  map lengths at the header but str and bin lengths only once the body is
  buffered, so a 5-byte ``str32`` header declaring 4 GiB would otherwise make
  the connection buffer up to ``max_message_bytes`` before it is refused. The
  frame of a Forward message (array header, tag, the PackedForward payload's
  str/bin header, a Message mode record's first fields) lies in these bytes.

Both work on bytes only; neither allocates more than it is given.
"""

from __future__ import annotations

import struct

from .errors import (
    ContainerTooLarge,
    ForwardError,
    HttpOnForwardPort,
    MessageTooLarge,
    TlsOnPlainPort,
)
from .limits import Limits

#: How many bytes at the start of a message :func:`check_frame` looks at. A
#: Forward frame is an array header, a tag (Fluent Bit's kubernetes tags run
#: to about 200 bytes) and the payload's header, so 512 holds it.
HEAD_BYTES = 512

#: Request lines of the HTTP methods (RFC 9110, and the HTTP/2 preface ``PRI``).
_HTTP_STARTS = (
    b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ",
    b"PRI * HTTP/2",
)


def sniff_protocol(head: bytes, eof: bool) -> bool:
    """Whether ``head`` (the first bytes of a connection) is enough to decide; raises for HTTP or TLS.

    Returns ``False`` while ``head`` could still be the start of an HTTP
    request line or a TLS record and more bytes may come; those bytes are no
    Forward message either way, so waiting for a few more costs nothing.
    """
    if not head:
        return eof
    first = head[0]
    if first == 0x16:  # TLS record type 22, handshake: 16 03 0x (SSL 3.0 to TLS 1.3 use 03 0x)
        if len(head) < 3:
            return eof or (len(head) == 2 and head[1] != 0x03)
        if head[1] == 0x03 and head[2] <= 0x04:
            raise TlsOnPlainPort(
                "the peer started a TLS handshake (ClientHello) on a plain Forward port: turn TLS off in the "
                "client (Fluent Bit: tls off) or serve TLS here (--tls-cert/--tls-key)")
        return True
    if 0x41 <= first <= 0x5A:  # an upper-case ASCII letter: every HTTP method starts with one
        for start in _HTTP_STARTS:
            if head.startswith(start):
                raise HttpOnForwardPort(
                    f"the peer sent an HTTP request ({head[:start.find(b' ') + 1 + 16].decode('ascii', 'replace')!r}...) "
                    "to the Forward port: point HTTP clients at the metrics port, and Fluent Bit's forward "
                    "output (not its http output) here")
            if len(head) < len(start) and start.startswith(head):
                return eof
        return True
    return True


_LEN = {
    0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"),
    0xD9: (1, "str"), 0xDA: (2, "str"), 0xDB: (4, "str"),
    0xC7: (1, "ext"), 0xC8: (2, "ext"), 0xC9: (4, "ext"),
    0xDC: (2, "array"), 0xDD: (4, "array"), 0xDE: (2, "map"), 0xDF: (4, "map"),
}
#: Bytes of the body of the fixed-size types (nil, bools, numbers, fixext).
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}
_UINT = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


def check_frame(head: bytes, limits: Limits, message_limit: int,
                too_large: type[ForwardError] = MessageTooLarge) -> None:
    """Check every declared length in ``head``, the first bytes of one msgpack object (a message).

    Raises :class:`~.errors.ContainerTooLarge` (as msgpack would, once the body arrived) for a str, bin, ext, array or map
    longer than its limit, and ``too_large`` (:class:`~.errors.MessageTooLarge`)
    for a body that would end past ``message_limit`` bytes from the message's start.
    Stops quietly at the end of ``head`` or at a body that runs past it (the
    body's length has been checked). Anything that is not msgpack is left for
    msgpack to refuse.
    """
    pos = 0
    end = len(head)
    todo = 1  # objects still to come in this message: the message itself, then each item of a container
    while pos < end and todo > 0:
        b = head[pos]
        pos += 1
        todo -= 1
        if b <= 0x7F or b >= 0xE0:  # fixint
            continue
        if b <= 0x8F:  # fixmap
            todo += 2 * (b & 0x0F)
            continue
        if b <= 0x9F:  # fixarray
            todo += b & 0x0F
            continue
        if b <= 0xBF:  # fixstr: at most 31 bytes
            pos += b & 0x1F
            continue
        fixed = _FIXED.get(b)
        if fixed is not None:
            pos += fixed
            continue
        spec = _LEN.get(b)
        if spec is None:  # 0xC1, never used: msgpack refuses it
            return
        width, kind = spec
        if pos + width > end:
            return
        n = _UINT[width].unpack_from(head, pos)[0]
        pos += width
        if kind == "array":
            if n > limits.max_array_len:
                raise ContainerTooLarge(f"an array header declares {n} items (limit {limits.max_array_len})")
            todo += n
            continue
        if kind == "map":
            if n > limits.max_map_len:
                raise ContainerTooLarge(f"a map header declares {n} keys (limit {limits.max_map_len})")
            todo += 2 * n
            continue
        if kind == "ext":
            if n > limits.max_ext_bytes:
                raise ContainerTooLarge(f"an ext header declares {n} bytes (limit {limits.max_ext_bytes})")
            pos += 1 + n  # the type byte, then the data
            continue
        if n > limits.max_str_bytes:
            raise ContainerTooLarge(f"a {kind} header declares {n} bytes (limit {limits.max_str_bytes})")
        if pos + n > message_limit:
            raise too_large(
                f"a {kind} header declares {n} bytes, which would make the message larger than {message_limit} bytes")
        pos += n


__all__ = ["HEAD_BYTES", "check_frame", "sniff_protocol"]
