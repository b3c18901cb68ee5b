"""What the Forward client raises: one base class, one subclass per way a delivery can fail.

A caller that only wants "did it get there" catches :class:`ClientError`; a
caller that retries on its own (the sender does) tells apart a failure that a
new connection may fix (:class:`ConnectionLost`, :class:`AckTimeout`) from
one it will not (:class:`HandshakeRefused`, :class:`UnexpectedReply`).
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class: the receiver did not take the message(s)."""


class ConnectionLost(ClientError):
    """The connection closed or was reset before the ack came; the chunk is resent."""


class AckTimeout(ClientError):
    """No ack within ``ack_timeout``; the chunk is resent on a new connection (Fluent Bit does the same)."""


class UnexpectedReply(ClientError):
    """The receiver wrote something that is not an ack of the chunk in flight (or not msgpack)."""


class HandshakeError(ClientError):
    """The secure-forward handshake went wrong on the wire (no HELO, a malformed PONG, a bad digest)."""


class HandshakeRefused(HandshakeError):
    """The receiver answered the PING with ``["PONG", false, reason, ...]``: wrong key or user.

    Retrying cannot fix it, so the sender gives up at once.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the receiver refused the handshake: {reason}")
        self.reason = reason


class DeliveryFailed(ClientError):
    """Every attempt failed (``retries`` exhausted, or the sender was closed); ``__cause__`` is the last failure."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class SenderClosed(ClientError):
    """:meth:`ForwardSender.close` was called (from another thread) while a send was in progress."""


class TLSFailed(ClientError):
    """The TLS handshake failed in a way a retry cannot fix (the receiver's certificate is not trusted,
    or this client's certificate was refused)."""
