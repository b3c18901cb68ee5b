"""The receiver's side of the stream as the client reads it, without I/O: HELO, PONG and acks.

:class:`ReplyReader` turns bytes into msgpack objects; :func:`ack_of` reads an
ack; :class:`ClientHandshake` is the client half of the secure-forward
handshake (Forward protocol v1, "Handshake Messages"; the server half is
:mod:`qwen_fluent.forward.handshake`, whose docstring has the message shapes):
it answers the HELO with a PING and checks the PONG, including the server's
digest, which proves the server knows the shared key too.
"""

from __future__ import annotations

import hmac
import os
import socket
from typing import Any, Iterator

import msgpack

from ..forward import field_bytes, sha512_hex
from .errors import HandshakeError, HandshakeRefused, UnexpectedReply

#: Bytes of replies the reader holds before a whole object is complete. A
#: receiver writes only small things to a client: an ack is ~40 bytes, a HELO
#: ~60, a PONG ~190 (a 128-hex-digit digest and a hostname of at most 255).
#: 64 KiB is far above any of them and bounds what a hostile or confused peer
#: (an HTTP server on the port, say) can make the client buffer.
MAX_REPLY_BYTES = 64 * 1024


class ReplyReader:
    """Bytes from the receiver in, msgpack objects out; bounded by :data:`MAX_REPLY_BYTES`."""

    def __init__(self) -> None:
        # surrogateescape: a non-UTF-8 str (Fluent Bit's salts are) keeps its exact bytes.
        self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape",
                                          max_buffer_size=MAX_REPLY_BYTES)

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise UnexpectedReply(f"the receiver sent more than {MAX_REPLY_BYTES} bytes that are not a reply") from None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._unpacker
        except (ValueError, msgpack.UnpackException) as exc:
            raise UnexpectedReply(f"the receiver sent something that is not msgpack: {exc}") from None


def ack_of(reply: Any) -> str:
    """The chunk id an ack names; :class:`UnexpectedReply` for anything that is not ``{"ack": str}``."""
    if isinstance(reply, dict) and len(reply) == 1 and isinstance(reply.get("ack"), str):
        return reply["ack"]
    raise UnexpectedReply(f"expected an ack, got {reply!r:.200}")


class ClientHandshake:
    """The client half of one connection's handshake: :meth:`ping` answers the HELO, :meth:`check_pong` the PONG.

    ``hostname`` is what the client calls itself in the PING (Fluent Bit's
    ``Self_Hostname``); ``username``/``password`` are sent only when the HELO
    asks for them (a non-empty ``auth`` salt). Unlike Fluentd's out_forward,
    the client does not refuse a server that has its own hostname: sending to
    a receiver on the same machine is this client's main use.
    """

    def __init__(self, shared_key: str, hostname: str | None = None, username: str = "", password: str = "") -> None:
        if not shared_key:
            raise ValueError("shared_key must not be empty")
        self._key = shared_key.encode()
        self.hostname = hostname or socket.gethostname()
        self.username = username
        self._password = password.encode()
        #: 16 random bytes as 32 hex digits: a str every receiver reads (Fluentd expects text).
        self._salt = os.urandom(16).hex().encode("ascii")
        self._nonce: bytes | None = None
        #: The hostname the server signed its PONG with, once checked.
        self.server_hostname: str | None = None

    def ping(self, helo: Any) -> bytes:
        """The packed PING answering ``helo`` (a decoded ``["HELO", {...}]``)."""
        if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO" and isinstance(helo[1], dict)):
            raise HandshakeError(f"expected a HELO from a receiver with a shared key, got {helo!r:.200}")
        nonce = field_bytes(helo[1].get("nonce"))
        auth_salt = field_bytes(helo[1].get("auth", b""))
        if not nonce or auth_salt is None:
            raise HandshakeError(f"malformed HELO: {helo!r:.200}")
        self._nonce = nonce
        host = self.hostname.encode()
        digest = sha512_hex(self._salt, host, nonce, self._key)
        user = self.username.encode()
        password_digest = sha512_hex(auth_salt, user, self._password) if auth_salt else ""
        return msgpack.packb(["PING", self.hostname, self._salt.decode("ascii"), digest, self.username,
                              password_digest], use_bin_type=True)

    def check_pong(self, pong: Any) -> str:
        """Check the PONG; return the server's hostname, or raise :class:`HandshakeRefused`/:class:`HandshakeError`."""
        if self._nonce is None:
            raise HandshakeError("PONG before PING")
        if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG" and isinstance(pong[1], bool)):
            raise HandshakeError(f"expected a PONG, got {pong!r:.200}")
        if not pong[1]:
            raise HandshakeRefused(str(pong[2]))
        host, digest = field_bytes(pong[3]), field_bytes(pong[4])
        if host is None or digest is None:
            raise HandshakeError(f"malformed PONG: {pong!r:.200}")
        expected = sha512_hex(self._salt, host, self._nonce, self._key)
        if not hmac.compare_digest(expected.encode(), digest):
            raise HandshakeError("the PONG's digest is wrong: the receiver does not know the shared key")
        self.server_hostname = host.decode("utf-8", "replace")
        return self.server_hostname
