"""The duplicate store shared by replicas: Redis, one key per message digest, set if absent with an expiry.

Several receivers behind one Kubernetes Service each see some of a client's
connections, so a chunk whose ack was lost can be resent to another replica.
Before counting a message, a replica claims its digest with ``SET key token
NX PX window``: exactly one claim succeeds for as long as the key lives (the
duplicate window), so exactly one replica counts the message; the others
find the key, count a duplicate and ack. The token names the connection
that claimed it; the same digest again on that same connection is a repeat,
not a retry (see :mod:`.window`), and is counted.

If the message cannot be counted after its claim (the metrics sink refused
its payload), the claim is released (deleted only if it is still ours, by a
compare-and-delete script) so that the client's resend is counted.

If Redis does not answer within ``timeout``, :class:`~.errors.StoreUnavailable`
is raised: the server closes the connection without an ack, the client keeps
the chunk and retries, and nothing is lost or counted twice. For
``retry_after`` seconds after a failure further messages are refused at once,
without a connection attempt, so a Redis that is down does not cost every
message a timeout on the event loop. The client (``redis`` from PyPI) is
imported only when a store is configured.

Calls are synchronous, on the event loop: one round trip per acked message
(tens of microseconds on loopback, well under a millisecond in a cluster).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .errors import StoreUnavailable

#: Deletes KEYS[1] only while it still holds ARGV[1] (our claim), atomically in Redis.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisStore:
    """``claim(digest, token, ttl)`` -> whether this caller is the first; ``release(digest, token)`` undoes it."""

    def __init__(self, url: str, *, prefix: str = "qwen-fluent:dedup:", timeout: float = 0.5,
                 retry_after: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[str], None] | None = None) -> None:
        import redis

        self._redis_errors = redis.exceptions
        self.url = url
        self.prefix = prefix.encode()
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry_on_timeout=False)
        self._release = self.client.register_script(_RELEASE)
        self.retry_after = retry_after
        self._clock = clock
        self._down_until = 0.0
        self._on_error = on_error

    def _key(self, digest: bytes) -> bytes:
        return self.prefix + digest.hex().encode()

    def _call(self, fn: Callable[[], Any]) -> Any:
        now = self._clock()
        if now < self._down_until:
            self._failed("backing_off", f"the duplicate store {self.url} failed less than "
                                        f"{self.retry_after:g} s ago; refusing without trying")
        errors = self._redis_errors
        try:
            return fn()
        except errors.TimeoutError as exc:
            self._down_until = self._clock() + self.retry_after
            self._failed("timeout", f"the duplicate store {self.url} did not answer in time: {exc}")
        except errors.ConnectionError as exc:
            self._down_until = self._clock() + self.retry_after
            self._failed("connection", f"cannot reach the duplicate store {self.url}: {exc}")
        except errors.RedisError as exc:
            self._down_until = self._clock() + self.retry_after
            self._failed("error", f"the duplicate store {self.url} refused a command: {exc}")

    def _failed(self, cause: str, detail: str) -> None:
        if self._on_error is not None:
            self._on_error(cause)
        raise StoreUnavailable(cause, detail + "; the message is not acked, so the client resends it")

    def claim(self, digest: bytes, token: bytes, ttl: float) -> bool:
        """Claim ``digest`` for ``ttl`` seconds; ``True`` if this call set it (or ``token`` holds it already)."""
        key, ms = self._key(digest), max(1, int(ttl * 1000))

        def run() -> bool:
            if self.client.set(key, token, nx=True, px=ms):
                return True
            holder = self.client.get(key)
            if holder == token:  # the same connection sent it again: a repeat; refresh its expiry
                self.client.set(key, token, px=ms)
                return True
            if holder is None:  # expired between the two commands: try once more
                return bool(self.client.set(key, token, nx=True, px=ms))
            return False

        return bool(self._call(run))

    def release(self, digest: bytes, token: bytes) -> None:
        """Give up a claim (its message was not counted), if it is still ours.

        Errors are ignored: the caller is already failing the message. The
        claim then lives out the window, and a resend within it is taken for
        a duplicate; the messages a sink refuses after a claim are payloads it
        cannot decode, which no resend would make countable either.
        """
        try:
            self._call(lambda: self._release(keys=[self._key(digest)], args=[token]))
        except StoreUnavailable:
            pass

    def close(self) -> None:
        self.client.close()
