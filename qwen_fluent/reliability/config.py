"""The ``[reliability]`` section: duplicate window, state directory, shared duplicate store."""

from __future__ import annotations

import dataclasses

#: Seconds a message's digest is remembered. Fluent Bit waits a random time
#: between ``scheduler.base`` (5 s) and ``min(scheduler.cap, base * 2**n)``
#: (cap 2000 s) before its n-th retry of a chunk; with its default
#: ``Retry_Limit 1`` the one retry comes within 10 s of the failure it
#: noticed, and with ``Retry_Limit 5`` the last one within 10+20+40+80+160 =
#: 310 s. 600 s covers five retries with room for the failure's own detection
#: time (a connect or ack timeout). ``Retry_Limit no_limits`` can wait up to
#: 2000 s per retry: raise this to match (docs/reliability.md).
DEDUP_WINDOW_SECONDS = 600.0

#: Digests remembered at most. One entry costs about 300 bytes (the 16-byte
#: digest as a bytes object, its time and origin, the ordered dict's slot;
#: tests/reliability/test_window.py measures it), so 100k entries are about 30 MB. Fluent Bit flushes one chunk per input
#: per ``flush`` interval (1 s), so 100k messages is 600 s of about 160
#: chunks per second: tens of pods per receiver. A receiver fed in Message
#: mode (one record per message) at higher rates forgets sooner than
#: ``dedup_window``; ``qwen_fluent_duplicate_window_evictions_total{bound}``
#: says which bound is doing the forgetting.
DEDUP_MAX_MESSAGES = 100_000

#: Seconds between periodic checkpoints. A SIGKILL loses what was counted
#: (and acked) since the last one unless acks wait for the checkpoint
#: (``ack_after_checkpoint``); 5 s keeps that small while a checkpoint of a
#: full receiver (2000 label sets, 100k digests: a few MB) costs well under
#: 1 % of one core.
CHECKPOINT_INTERVAL = 5.0

#: Seconds a group commit waits to gather messages before one fsync makes
#: them all durable. Fluent Bit's forward output waits for an ack per chunk
#: with a timeout of tens of seconds, so 20 ms is invisible to it, and one
#: fsync (1-10 ms on an SSD) then covers every message of 20 ms.
GROUP_COMMIT_DELAY = 0.02

#: Seconds one Redis command may take before the store counts as unreachable.
#: A loopback or in-cluster round trip is well under a millisecond; 0.5 s
#: tolerates a busy Redis without stalling the event loop (the store is
#: called from it) for long.
REDIS_TIMEOUT = 0.5

#: Seconds after a store failure during which messages are refused at once
#: (no new connection attempt): a Redis that is down must not cost every
#: message a timeout on the event loop.
REDIS_RETRY_AFTER = 1.0


@dataclasses.dataclass
class ReliabilityConfig:
    """What ``[reliability]`` (and ``--state-dir``, ``--dedup-window``, ``--redis-url``) set.

    Duplicate detection is on by default (``dedup = true``): it costs one
    digest per acked message and changes nothing for a client that never
    resends. The state directory and the Redis store are off until given.
    """

    #: Remember digests of acked messages and count a resent one once.
    dedup: bool = True
    dedup_window: float = DEDUP_WINDOW_SECONDS
    dedup_max_messages: int = DEDUP_MAX_MESSAGES
    #: Checkpoint the counters and the window here, restore them at start ("": off).
    state_dir: str = ""
    checkpoint_interval: float = CHECKPOINT_INTERVAL
    #: With a state directory, ack a Forward message only once a checkpoint containing it is on disk
    #: (group commit). ``false`` acks at once: faster, but a SIGKILL loses what was acked since the
    #: last periodic checkpoint (docs/reliability.md measures both).
    ack_after_checkpoint: bool = True
    group_commit_delay: float = GROUP_COMMIT_DELAY
    #: ``redis://host:6379/0``: a duplicate store shared by replicas ("": off).
    redis_url: str = ""
    redis_timeout: float = REDIS_TIMEOUT
    #: Prefix of the store's keys, so that several receiver tiers can share one Redis.
    redis_prefix: str = "qwen-fluent:dedup:"

    def __post_init__(self) -> None:
        if not self.dedup_window > 0:
            raise ValueError(f"dedup_window must be more than 0 seconds, got {self.dedup_window}")
        if self.dedup_max_messages < 1:
            raise ValueError(f"dedup_max_messages must be at least 1, got {self.dedup_max_messages}")
        if not self.checkpoint_interval > 0:
            raise ValueError(f"checkpoint_interval must be more than 0 seconds, got {self.checkpoint_interval}")
        if not 0 <= self.group_commit_delay <= 1:
            raise ValueError(f"group_commit_delay must be 0..1 seconds, got {self.group_commit_delay}")
        if not self.redis_timeout > 0:
            raise ValueError(f"redis_timeout must be more than 0 seconds, got {self.redis_timeout}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
