"""Errors the Forward protocol core raises.

Each error ends the connection it happened on, and only that one. Every class
carries a short, fixed ``reason`` that becomes the ``reason`` label of
``qwen_fluent_errors_total`` and appears in the log line, so the set of label
values is bounded by the classes below. ``str(error)`` is the human detail.
"""

from __future__ import annotations


class ForwardError(Exception):
    """Base class: the peer broke the protocol or a limit; close the connection."""

    reason = "protocol_error"


class MalformedMessage(ForwardError):
    """The bytes are msgpack, but not a Forward message (wrong shape or types)."""

    reason = "malformed_message"


class InvalidMsgpack(ForwardError):
    """The bytes are not valid msgpack (a reserved byte, an unhashable key, ...)."""

    reason = "invalid_msgpack"


class LimitExceeded(ForwardError):
    """A documented limit was broken (see :class:`~qwen_fluent.forward.limits.Limits`)."""

    reason = "limit_exceeded"


class MessageTooLarge(LimitExceeded):
    """One message is larger than ``Limits.max_message_bytes``."""

    reason = "message_too_large"


class DecompressedTooLarge(LimitExceeded):
    """A compressed payload expands past ``Limits.max_decompressed_bytes`` (a gzip bomb, or just too big)."""

    reason = "decompressed_too_large"


class ContainerTooLarge(LimitExceeded):
    """A msgpack str, bin, array or map is longer than its limit."""

    reason = "container_too_large"


class TooManyObjects(LimitExceeded):
    """One message decodes to more maps and arrays than ``Limits.max_objects``."""

    reason = "too_many_objects"


class NestingTooDeep(LimitExceeded):
    """msgpack containers nest deeper than the decoder allows."""

    reason = "nesting_too_deep"


class BadCompression(ForwardError):
    """``compressed: gzip`` or ``zstd`` but the payload is not valid in that codec, or another codec was named."""

    reason = "bad_compression"


class WrongProtocol(ForwardError):
    """The peer does not speak Forward at all on this port (base class; never raised itself)."""

    reason = "wrong_protocol"


class HttpOnForwardPort(WrongProtocol):
    """The first bytes are an HTTP request (``GET /``, ``POST /``, ...): an HTTP client, or a
    Fluent Bit ``http`` output, pointed at the Forward port."""

    reason = "http_on_forward_port"


class TlsOnPlainPort(WrongProtocol):
    """The first bytes are a TLS ClientHello: the client has ``tls on`` and this port serves plain Forward."""

    reason = "tls_on_plain_port"


class PlainOnTlsPort(WrongProtocol):
    """Plain bytes (not a TLS record) on a port that serves TLS: the client has ``tls off``.

    Raised by no core code (the TLS layer sits in front of it); the server counts it under this reason.
    """

    reason = "plain_on_tls_port"


class UnauthenticatedTooLarge(LimitExceeded):
    """More than ``Limits.max_unauthenticated_bytes`` arrived before the PING verified."""

    reason = "unauthenticated_too_large"


class AuthenticationRequired(ForwardError):
    """Data arrived before the secure-forward handshake completed."""

    reason = "auth_required"


class AuthenticationFailed(ForwardError):
    """The PING did not verify (wrong shared key, user, password or digest)."""

    reason = "auth_failed"


class ConnectionClosedError(ForwardError):
    """Data arrived on a connection the core already closed."""

    reason = "closed"


class TruncatedMessage(ForwardError):
    """The peer closed the stream in the middle of a message."""

    reason = "truncated"


#: Every ``reason`` value, so that metrics can pre-declare the label values.
REASONS = tuple(
    sorted(
        {
            cls.reason
            for cls in (
                ForwardError,
                MalformedMessage,
                InvalidMsgpack,
                LimitExceeded,
                MessageTooLarge,
                DecompressedTooLarge,
                ContainerTooLarge,
                TooManyObjects,
                NestingTooDeep,
                BadCompression,
                WrongProtocol,
                HttpOnForwardPort,
                TlsOnPlainPort,
                PlainOnTlsPort,
                UnauthenticatedTooLarge,
                AuthenticationRequired,
                AuthenticationFailed,
                ConnectionClosedError,
                TruncatedMessage,
            )
        }
    )
)
