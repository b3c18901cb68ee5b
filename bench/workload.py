"""Seeded inference-server request records, framed as Fluent Bit's ``forward`` output frames them.

Used by ``bench/run.py``: it builds every byte stream of a benchmark run once,
before any clock starts, so that qwen-fluent, the decode ceiling and the
article's exporter are all fed the same records.

Two workloads carry the same request fields (same seed, same order):

* ``kubernetes``: what Fluent Bit delivers from a Kubernetes node with
  ``tail`` + ``cri`` + the kubernetes filter with ``Merge_Log On`` and
  ``Keep_Log Off``: the request fields at the root of the record, plus the
  runtime's ``time``/``stream``/``_p`` and the filter's ``kubernetes`` map
  (``pod_name``, ``namespace_name``, ``container_name``, ``host``,
  ``labels``). As with a real ``Tag kube.*`` tail input, each chunk comes
  from one container log file, so each Forward message carries one pod's
  records under that file's tag; messages go round the pods in turn.
* ``flat``: the request fields only, as a Fluent Bit tailing a plain JSON
  log (or the article's application writing to stdout) would send them.

Two framings, both with ``Require_ack_response`` semantics (a ``chunk``
option on every message):

* PackedForward: ``[tag, <bin: [time, record] entries back to back>,
  {"chunk": id, "size": n}]``, what Fluent Bit's forward output sends.
* CompressedPackedForward: the same payload as one gzip member (level 6,
  zlib's default, which Fluent Bit uses), plus ``"compressed": "gzip"``.

Times are EventTime (msgpack ext type 0: seconds and nanoseconds, 4 bytes
each), as Fluent Bit sends them unless ``Time_as_Integer`` is set. Chunk
ids are, as Fluent Bit makes them, base64 of the first 16 bytes of the
SHA-512 of the payload.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import random
import struct
import time

import msgpack

#: The request statuses and their weights: mostly successes, a few server
#: and client errors, as a healthy inference service logs them.
STATUSES = ["success"] * 95 + ["error"] * 3 + ["client_error"] * 2
PATHS = ("/v1/chat/completions", "/v1/completions")

#: Modes of the Forward protocol this benchmark sends (names as in the spec).
PACKED = "PackedForward"
COMPRESSED = "CompressedPackedForward"
KUBERNETES = "kubernetes"
FLAT = "flat"

#: Flat records come from one application log, as with a plain tail input.
FLAT_TAG = "llm.inference"
#: First second of the generated EventTimes (2025-04-05T10:23:45Z), fixed so
#: that every run builds the same bytes.
EPOCH = 1743848625
#: Fluent Bit (through zlib's default) compresses at level 6.
GZIP_LEVEL = 6


def request_fields(rng: random.Random, i: int) -> dict:
    """The JSON object an inference server logs for request ``i``: the article's fields."""
    total = rng.lognormvariate(0.3, 0.8) * 1000
    queue = total * rng.random() * 0.1
    return {
        "timestamp": "2025-04-05T10:23:45Z",
        "request_id": f"req_{i:012d}",
        "method": "POST",
        "path": rng.choice(PATHS),
        "input_tokens": rng.randrange(16, 8192),
        "output_tokens": rng.randrange(1, 1024),
        "total_time_ms": round(total, 1),
        "queue_time_ms": round(queue, 1),
        "inference_time_ms": round(total - queue, 1),
        "gpu_memory_mb": 18432,
        "status": rng.choice(STATUSES),
    }


@dataclasses.dataclass(frozen=True)
class Pod:
    """One inference pod: its log file's tag and the kubernetes filter's map for it."""

    tag: str
    kubernetes: dict


def pods(count: int) -> list[Pod]:
    """``count`` pods of one Deployment on a few GPU nodes, named as Kubernetes names them."""
    out = []
    for p in range(count):
        name = f"llm-inference-7d9f8b6c5-{p:05d}"
        container_id = hashlib.sha256(name.encode()).hexdigest()
        out.append(Pod(
            tag=f"kube.var.log.containers.{name}_ml-serving_vllm-{container_id}.log",
            kubernetes={
                "pod_name": name,
                "namespace_name": "ml-serving",
                "container_name": "vllm",
                "host": f"gpu-node-{p % 4:02d}",
                "labels": {"app.kubernetes.io/name": "llm-inference", "pod-template-hash": "7d9f8b6c5",
                           "model": "qwen2.5-7b-instruct"},
            },
        ))
    return out


def event_time(seconds: int, nanoseconds: int) -> msgpack.ExtType:
    """Fluent Bit's EventTime: ext type 0, big-endian seconds and nanoseconds."""
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanoseconds))


def chunk_id(payload: bytes) -> str:
    """The chunk id Fluent Bit would give this payload."""
    return base64.b64encode(hashlib.sha512(payload).digest()[:16]).decode()


@dataclasses.dataclass
class Stream:
    """The Forward messages of one workload in one mode, and what each should be acked with."""

    workload: str
    mode: str
    messages: list[bytes] = dataclasses.field(default_factory=list)
    chunks: list[str] = dataclasses.field(default_factory=list)
    records: int = 0
    #: Of ``records``, the request logs (the rest are log lines: ``build(log_every=...)``).
    requests: int = 0

    @property
    def size(self) -> int:
        return sum(len(m) for m in self.messages)

    @property
    def name(self) -> str:
        return f"{self.workload}/{self.mode}"

    def add(self, tag: str, payload: bytes, entries: int, compressed: bool, requests: int | None = None) -> None:
        body = gzip.compress(payload, GZIP_LEVEL) if compressed else payload
        chunk = chunk_id(body)
        options: dict = {"chunk": chunk, "size": entries}
        if compressed:
            options["compressed"] = "gzip"
        self.messages.append(msgpack.packb([tag, body, options]))
        self.chunks.append(chunk)
        self.records += entries
        self.requests += entries if requests is None else requests


@dataclasses.dataclass
class Workloads:
    """Everything one benchmark run sends: four Forward streams and the exporter's JSON lines."""

    records: int
    per_message: int
    pods: int
    streams: dict[tuple[str, str], Stream]
    json_lines: bytes


#: The two ways ``build`` stamps records (``bench/run.py --stamps``).
STAMPS = ("shared", "per-record")


def record_stamp(i: int) -> str:
    """Record ``i``'s own ``timestamp`` for ``build(stamps="per-record")``: a millisecond apart, as a
    request log stamps each request (``EPOCH`` plus ``i`` ms, UTC)."""
    seconds, ms = EPOCH + i // 1000, i % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


#: What ``build(log_every=N)`` puts between request logs: a server's warning on stderr, which the
#: normaliser reads as a log line (``qwen_log_messages_total{level="warning"}``).
LOG_LINE = "WARNING 04-05 10:23:45 engine.py:512] queue is long: 40 requests waiting"


def build(records: int, per_message: int = 1000, pod_count: int = 20, seed: int = 7,
          stamps: str = "shared", log_every: int = 0) -> Workloads:
    """Build all streams from one seeded sequence of request records.

    Message ``k`` holds records ``k * per_message ...``; in the kubernetes
    workload it is pod ``k % pod_count``'s chunk. The flat workload and the
    JSON lines carry exactly the same request fields in the same order.
    ``stamps``: ``"shared"`` (every record the article's one ``timestamp``
    string, so a message has one distinct stamp) or ``"per-record"`` (each
    record its own, a millisecond apart: :func:`record_stamp`). ``log_every``:
    in the kubernetes workload, a log line (:data:`LOG_LINE`, Fluent Bit's
    envelope on stderr) after every ``log_every`` request logs of a message,
    as a server writes warnings between its request lines (0: none). Those
    are extra records: ``Stream.records`` counts them, ``Stream.requests`` not.
    """
    if records < 1 or per_message < 1 or pod_count < 1:
        raise ValueError("records, per_message and pods must be >= 1")
    if stamps not in STAMPS:
        raise ValueError(f"stamps must be one of {STAMPS}")
    rng = random.Random(seed)
    fleet = pods(pod_count)
    streams = {(w, m): Stream(w, m) for w in (KUBERNETES, FLAT) for m in (PACKED, COMPRESSED)}
    lines: list[bytes] = []
    packer = msgpack.Packer()
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for k, start in enumerate(range(0, records, per_message)):
        pod = fleet[k % pod_count]
        n = min(per_message, records - start)
        flat_entries = []
        kube_entries = []
        for i in range(start, start + n):
            fields = request_fields(rng, i)
            if stamps == "per-record":
                fields["timestamp"] = record_stamp(i)
            seconds, ns = EPOCH + i // 1000, (i % 1000) * 1_000_000 + 123_456
            t = event_time(seconds, ns)
            flat_entries.append(packer.pack([t, fields]))
            lines.append(dumps(fields).encode())
            runtime_time = f"2025-04-05T10:{23 + seconds // 60 % 37:02d}:{seconds % 60:02d}.{ns:09d}Z"
            kube = {"time": runtime_time, "stream": "stdout", "_p": "F", **fields, "kubernetes": pod.kubernetes}
            kube_entries.append(packer.pack([t, kube]))
            if log_every and (i - start) % log_every == log_every - 1:
                line = {"time": runtime_time, "stream": "stderr", "_p": "F", "log": LOG_LINE,
                        "kubernetes": pod.kubernetes}
                kube_entries.append(packer.pack([t, line]))
        flat_payload = b"".join(flat_entries)
        kube_payload = b"".join(kube_entries)
        for mode, compressed in ((PACKED, False), (COMPRESSED, True)):
            streams[(FLAT, mode)].add(FLAT_TAG, flat_payload, n, compressed)
            streams[(KUBERNETES, mode)].add(pod.tag, kube_payload, len(kube_entries), compressed, requests=n)
    return Workloads(records, per_message, pod_count, streams, b"\n".join(lines) + b"\n")
