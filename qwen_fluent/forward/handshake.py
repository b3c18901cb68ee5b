"""The secure-forward handshake, server side: HELO, PING, PONG.

Forward protocol v1 ("Handshake Messages"): on connect the server sends
``["HELO", {"nonce": <16 random bytes>, "auth": <salt or "">, "keepalive": true}]``.
The client answers ``["PING", hostname, shared_key_salt,
hex(sha512(shared_key_salt + hostname + nonce + shared_key)), username,
hex(sha512(auth_salt + username + password))]``. The server checks both
digests and answers ``["PONG", true, "", server_hostname,
hex(sha512(shared_key_salt + server_hostname + nonce + shared_key))]``, or
``["PONG", false, reason, "", ""]`` and closes.

Facts from real Fluent Bit 4.2.8 captures (``tests/vectors/``): the client's
salt is 16 random bytes packed as a msgpack *str* that is not valid UTF-8, so
every field is compared as bytes, never as text; Fluent Bit accepts the nonce
and auth salt as bin. The failure reasons follow Fluentd's in_forward
(``shared_key mismatch``, ``username/password mismatch``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any, Mapping

import msgpack

#: Failure reasons, as Fluentd's in_forward words them; they go into the PONG
#: and (as ``auth_failures_total{reason}``) into the metrics.
INVALID_PING = "invalid ping message"
SHARED_KEY_MISMATCH = "shared_key mismatch"
USER_MISMATCH = "username/password mismatch"


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """What the server needs to run the handshake.

    ``users`` maps usernames to passwords; when it is empty, user
    authentication is off (HELO carries an empty ``auth``) and any username is
    accepted, as in Fluentd with ``user_auth false``.
    """

    shared_key: str
    self_hostname: str
    users: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.shared_key:
            raise ValueError("shared_key must not be empty")
        if not self.self_hostname:
            raise ValueError("self_hostname must not be empty")


def field_bytes(value: Any) -> bytes | None:
    """A handshake field (HELO, PING, PONG) as the exact bytes that were on the wire; ``None`` if not a string.

    Strings were decoded with ``surrogateescape``, so encoding them back the same
    way gives the original bytes, valid UTF-8 or not.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def sha512_hex(*parts: bytes) -> str:
    """The hex SHA-512 of ``parts`` in order: every digest of the secure-forward handshake, both sides."""
    h = hashlib.sha512()
    for part in parts:
        h.update(part)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class PingResult:
    """The outcome of checking one PING: the reply to send, and who the client said it was."""

    ok: bool
    reason: str
    hostname: str
    username: str
    pong: bytes


class ServerHandshake:
    """One connection's handshake: makes the HELO, checks the PING, makes the PONG."""

    def __init__(self, config: AuthConfig, nonce: bytes, auth_salt: bytes) -> None:
        self.config = config
        self.nonce = nonce
        # The user-auth salt is sent only when users are configured; an empty
        # string tells the client that no username/password is expected.
        self.auth_salt = auth_salt if config.users else b""
        self._shared_key = config.shared_key.encode()
        self._hostname = config.self_hostname.encode()

    def helo(self) -> bytes:
        """The packed HELO, written as one piece (Fluent Bit reads it in one read)."""
        return msgpack.packb(
            ["HELO", {"nonce": self.nonce, "auth": self.auth_salt if self.config.users else "", "keepalive": True}],
            use_bin_type=True,
        )

    def _fail(self, reason: str, hostname: str = "", username: str = "") -> PingResult:
        pong = msgpack.packb(["PONG", False, reason, "", ""], use_bin_type=True)
        return PingResult(False, reason, hostname, username, pong)

    def check_ping(self, message: Any) -> PingResult:
        """Verify a decoded PING and return the PONG to send."""
        if not (isinstance(message, list) and len(message) == 6 and message[0] == "PING"):
            return self._fail(INVALID_PING)
        fields = [field_bytes(v) for v in message[1:]]
        if any(v is None for v in fields):
            return self._fail(INVALID_PING)
        hostname, salt, digest, username, password_digest = fields  # type: ignore[misc]
        host_text = hostname.decode("utf-8", "replace")
        user_text = username.decode("utf-8", "replace")
        expected = sha512_hex(salt, hostname, self.nonce, self._shared_key)
        if not hmac.compare_digest(expected.encode(), digest):
            return self._fail(SHARED_KEY_MISMATCH, host_text, user_text)
        if self.config.users:
            password = self.config.users.get(user_text)
            if password is None:
                # Compare anyway so that an unknown user costs the same time as a known one.
                hmac.compare_digest(b"0" * 128, password_digest)
                return self._fail(USER_MISMATCH, host_text, user_text)
            expected_pw = sha512_hex(self.auth_salt, username, password.encode())
            if not hmac.compare_digest(expected_pw.encode(), password_digest):
                return self._fail(USER_MISMATCH, host_text, user_text)
        server_digest = sha512_hex(salt, self._hostname, self.nonce, self._shared_key)
        pong = msgpack.packb(["PONG", True, "", self.config.self_hostname, server_digest], use_bin_type=True)
        return PingResult(True, "", host_text, user_text, pong)
