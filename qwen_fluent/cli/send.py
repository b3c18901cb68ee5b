"""``qwen-fluent send FILE...``: replay log files over Forward, as Fluent Bit's ``tail`` + ``forward`` would.

Each file (``-`` is standard input; a gzip file is read through gzip) is read as log lines by
:class:`qwen_fluent.records.lines.LineReader`: JSON lines as the article writes them, docker json-file
and CRI container logs (partial lines joined, as Fluent Bit's ``docker`` and ``cri`` multiline parsers
join them), plain text lines as ``{"log": text}``. The records go out through the Forward client
(:mod:`qwen_fluent.client`) in batches, each batch one Forward message under the file's tag, with the
options Fluent Bit's forward output has: ``--gzip`` (``Compress gzip``), ``--ack``
(``Require_ack_response``), ``--shared-key`` (the secure-forward handshake), ``--tls``.

A record's time is its ``time`` field when that is an ISO 8601 timestamp (CRI and docker lines have
one, and Fluent Bit's parsers take it), else the time it was read, as in Fluent Bit's tail.

It prints what it sent and, with ``--ack``, what was acknowledged; a delivery that fails after the
retries is one line on stderr and exit code 1, a bad argument or an unreadable file exit code 2.
"""

from __future__ import annotations

import argparse
import gzip
import os
import select
import sys
import time
from datetime import datetime
from typing import IO, Any

#: Records per Forward message at most (``--batch``). Fluent Bit flushes whole chunks of up to ~2 MB,
#: a few thousand request records; 1000 keeps each message and its ack well inside the receiver's
#: limits (``max_message_bytes``) while amortising the per-message cost.
DEFAULT_BATCH = 1000
MAX_BATCH = 100_000

#: Bytes of log text per Forward message at most, whatever ``--batch`` says: Fluent Bit's chunks are
#: about 2 MB, and the receiver refuses a message over its ``max_message_bytes`` (16 MiB by default).
MAX_BATCH_BYTES = 2 * 1024 * 1024

#: Seconds a batch from standard input may wait for more lines before it is sent anyway: Fluent Bit's
#: ``flush`` default. A file is read to its end at once; a pipe (``tail -f | qwen-fluent send -``)
#: must not hold records back until a batch fills.
STDIN_FLUSH = 1.0

#: Bytes per read: large enough that reading costs nothing next to sending, small enough to be bounded.
READ_SIZE = 64 * 1024

MODES = {"message": "MESSAGE", "forward": "FORWARD", "packed": "PACKED_FORWARD", "gzip": "COMPRESSED_PACKED_FORWARD"}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "send",
        help="replay log files (JSON lines, docker, CRI) to a Forward receiver, as Fluent Bit would",
        description="Read log files as Fluent Bit's tail input does (JSON lines, docker json-file and CRI "
                    "container logs with partial lines joined, plain text) and send the records over the "
                    "Forward protocol as its forward output does. '-' reads standard input.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="log files; '-' for standard input; gzip is read too")
    t = p.add_argument_group("where")
    t.add_argument("--host", default="127.0.0.1", help="receiver address (default 127.0.0.1)")
    t.add_argument("--port", type=int, default=24224, help="receiver Forward port (default 24224)")
    t.add_argument("--unix-socket", metavar="PATH", help="send over this Unix socket instead of TCP")
    f = p.add_argument_group("what and how")
    f.add_argument("--tag", default="kube.*",
                   help="tag of the records; a '*' becomes the file's absolute path with '/' as '.', as in "
                        "Fluent Bit's tail (default kube.*, which lets the receiver read the pod from a "
                        "/var/log/containers file name)")
    f.add_argument("--mode", choices=sorted(MODES), default="forward",
                   help="Forward mode (default forward, Fluent Bit's default; gzip is CompressedPackedForward)")
    f.add_argument("--gzip", action="store_true", help="compress: the same as --mode gzip (Fluent Bit Compress gzip)")
    f.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"records per message at most (default {DEFAULT_BATCH}; also at most "
                        f"{MAX_BATCH_BYTES // (1024 * 1024)} MiB of log text)")
    f.add_argument("--time-as-integer", action="store_true", help="whole-second times (Fluent Bit Time_as_Integer)")
    a = p.add_argument_group("delivery")
    a.add_argument("--ack", action="store_true",
                   help="ask for an ack of every message and resend it until acked (Require_ack_response)")
    a.add_argument("--ack-timeout", type=float, default=None, metavar="S", help="seconds to wait for an ack (default 10)")
    a.add_argument("--retries", type=int, default=None, metavar="N",
                   help="resends of a message after a lost connection or ack (default 5)")
    s = p.add_argument_group("security")
    s.add_argument("--shared-key", metavar="KEY", help="run the secure-forward handshake with this key")
    s.add_argument("--self-hostname", metavar="NAME", help="hostname sent in the handshake (default: this host)")
    s.add_argument("--username", default="", help="user for the handshake, when the receiver has users")
    s.add_argument("--password", default="", help="that user's password")
    s.add_argument("--tls", action="store_true", help="connect with TLS")
    s.add_argument("--tls-ca-file", metavar="PEM", help="CA that signed the receiver's certificate (default: system CAs)")
    s.add_argument("--tls-no-verify", action="store_true", help="accept any certificate (testing only)")
    s.add_argument("--tls-cert", metavar="PEM", help="client certificate, for a receiver that requires one")
    s.add_argument("--tls-key", metavar="PEM", help="key of --tls-cert")


class SendError(Exception):
    """An argument or a file is wrong; the message is one line a user can act on."""


def _fail(message: str, code: int) -> int:
    print(f"qwen-fluent: error: {message}", file=sys.stderr)
    return code


def tag_for(pattern: str, path: str) -> str:
    """Fluent Bit tail's tag expansion: ``*`` becomes the absolute path with ``/`` as ``.``."""
    if "*" not in pattern:
        return pattern
    name = "stdin" if path == "-" else os.path.abspath(path).lstrip("/").replace("/", ".")
    return pattern.replace("*", name)


def event_time(record: dict[str, Any], now: float) -> float:
    """The record's ``time`` (ISO 8601, as CRI and docker write it) in seconds, else ``now``."""
    value = record.get("time")
    if not isinstance(value, str) or len(value) < 20 or value[10] != "T":
        return now
    text = value.replace("Z", "+00:00") if value.endswith("Z") else value
    # fromisoformat before 3.11 takes at most 6 fractional digits; CRI writes 9. Keep the nanoseconds.
    dot = text.find(".", 19)
    extra = 0.0
    if dot > 0:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        digits = text[dot + 1:end]
        extra = float("0." + digits) if digits else 0.0
        text = text[:dot] + text[end:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return now
    if parsed.tzinfo is None:
        return now  # a time without a zone is not what CRI or docker write; do not guess one
    return parsed.timestamp() + extra


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise SendError(f"cannot read {path}: {exc.strerror}") from None
    if f.peek(2)[:2] == b"\x1f\x8b":  # gzip's magic bytes: a rotated, compressed log
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


class Replay:
    """Reads files into batches and sends them; counts what it did."""

    def __init__(self, args: argparse.Namespace, sender: Any) -> None:
        from ..client import Mode

        self.args = args
        self.sender = sender
        self.mode = Mode[MODES["gzip" if args.gzip else args.mode]]
        self.records_read = 0
        self.unparsed: dict[str, int] = {}
        self.samples: list[str] = []

    def send_batch(self, tag: str, events: list[tuple[float, dict[str, Any]]]) -> None:
        from ..client import build

        for chunk in build(tag, events, self.mode, ack=self.args.ack, time_as_integer=self.args.time_as_integer):
            self.sender.send(chunk)

    def file(self, path: str, stream: IO[bytes]) -> None:
        from ..records.lines import LineReader

        tag = tag_for(self.args.tag, path)
        reader = LineReader()
        live = path == "-"
        try:
            self._read(reader, stream, tag, live)
        finally:
            self.records_read += reader.records
            for reason, n in reader.unparsed.items():
                if n:
                    self.unparsed[reason] = self.unparsed.get(reason, 0) + n
            for sample in reader.samples:
                if len(self.samples) < 5:
                    self.samples.append(f"{path}:{sample.line_number}: {sample.reason}: {sample.text}")

    def _read(self, reader: Any, stream: IO[bytes], tag: str, live: bool) -> None:
        batch: list[tuple[float, dict[str, Any]]] = []
        size = 0
        first_at = 0.0
        fd = stream.fileno() if live else -1

        def flush() -> None:
            nonlocal batch, size
            if batch:
                self.send_batch(tag, batch)
                batch, size = [], 0

        while True:
            if live and batch:
                # A pipe may go quiet with a batch half full: send it after STDIN_FLUSH, as Fluent Bit flushes.
                left = first_at + STDIN_FLUSH - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    flush()
                    continue
            data = stream.read1(READ_SIZE) if hasattr(stream, "read1") else stream.read(READ_SIZE)
            records = reader.data(data) if data else reader.close()
            now = time.time()
            for record in records:
                if not batch:
                    first_at = time.monotonic()
                batch.append((event_time(record, now), record))
                size += _size(record)
                if len(batch) >= self.args.batch or size >= MAX_BATCH_BYTES:
                    flush()
            if not data:
                break
        flush()


def _size(record: dict[str, Any]) -> int:
    # The log text a record came from, roughly: its string values (the `log` line, or the fields of a
    # JSON line). Cheap, and only bounds the batch: the exact size is known once it is packed.
    return sum(len(v) if isinstance(v, str) else 8 for v in record.values()) + 16


def _sender(args: argparse.Namespace) -> Any:
    from ..client import ForwardSender, tls_context

    tls = None
    if args.tls or args.tls_ca_file or args.tls_no_verify or args.tls_cert:
        try:
            tls = tls_context(args.tls_ca_file, verify=not args.tls_no_verify, cert_file=args.tls_cert,
                              key_file=args.tls_key)
        except (OSError, ValueError) as exc:
            raise SendError(f"TLS files could not be loaded: {exc}") from None
    options: dict[str, Any] = {}
    if args.ack_timeout is not None:
        options["ack_timeout"] = args.ack_timeout
    if args.retries is not None:
        options["retries"] = args.retries
    try:
        return ForwardSender(args.host, args.port, unix_path=args.unix_socket, tls=tls,
                             shared_key=args.shared_key or "", self_hostname=args.self_hostname,
                             username=args.username, password=args.password, **options)
    except ValueError as exc:
        raise SendError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..client import ClientError

    if not 1 <= args.batch <= MAX_BATCH:
        return _fail(f"--batch must be 1..{MAX_BATCH}, got {args.batch}", 2)
    if args.files.count("-") > 1:
        return _fail("'-' (standard input) can be given once", 2)
    if not 1 <= args.port <= 65535:
        return _fail(f"--port must be 1..65535, got {args.port}", 2)
    if args.tls_key and not args.tls_cert:
        return _fail("--tls-key needs --tls-cert", 2)
    if (args.username or args.password) and not args.shared_key:
        return _fail("--username and --password need --shared-key: the handshake carries them", 2)
    try:
        streams = [(path, _open(path)) for path in args.files]  # every file readable before anything is sent
        sender = _sender(args)
    except SendError as exc:
        return _fail(str(exc), 2)
    replay = Replay(args, sender)
    code = 0
    try:
        for path, stream in streams:
            try:
                replay.file(path, stream)
            except (OSError, EOFError) as exc:  # a truncated gzip file, a read error
                code = _fail(f"reading {path} stopped: {exc}", 1)
                break
    except ClientError as exc:
        code = _fail(str(exc), 1)
    except KeyboardInterrupt:
        code = 130
    finally:
        sender.close()
        for path, stream in streams:
            if path != "-":
                stream.close()
    stats = sender.stats
    acked = f", acked {stats.acked} messages" if args.ack else " (no acks asked for)"
    print(f"sent {stats.records} of {replay.records_read} records read in {stats.messages} messages to "
          f"{sender.where}{acked}, resent {stats.resends}")
    if replay.unparsed:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(replay.unparsed.items()))
        print(f"unparsed lines: {sum(replay.unparsed.values())} ({reasons}); the first:")
        for sample in replay.samples:
            print(f"  {sample}")
    return code
