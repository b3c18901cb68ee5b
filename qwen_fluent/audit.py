"""The sensitive-data audit as a sink: ``[audit] sensitive = true`` or ``serve --audit-sensitive``.

The article this project follows ends on one recommendation: know when the
inference server's logs carry secrets or personal data (a request's headers
logged whole, a user's prompt with a card number in it). With the audit on,
the app adds an :class:`AuditSink` to the fan-out beside the metrics sink:
every record that arrives, on any input, is scanned by
:class:`~qwen_fluent.records.sensitive.SensitiveScanner` and counted into
:class:`~qwen_fluent.metrics.audit.SensitiveMetrics` by kind, Kubernetes
namespace and pod (``<ns>_sensitive_records_total``). docs/audit.md says what
is detected, how, what it misses and what it costs.

What it never does: keep, count under, or log the matched text. The scanner
returns kind names only; the labels are the pod's names from the record's
``kubernetes`` map or tail tag (resolved and cut as the normaliser does); the
one log line this module can write names an exception's type, not its message
(a ``ValueError`` from ``int()`` quotes its input).

Cost: the scanner costs 7 to 18 us a record (1.4 to 4.2 times the
normaliser on the same record, bench/bench_sensitive.py), and it needs every record decoded into
Python objects. ``--stdout`` gets that by having the connection decode every
PackedForward payload, which takes the metrics sink off its typed fast path;
measured for the audit that way the whole receiver paid +47 us a record
(0.13x the records/s). Instead the connection keeps deferring, the metrics
sink keeps its fast path, and this sink decodes a deferred payload itself
(:func:`~qwen_fluent.forward.decode_packed`, with the same decode limits):
+21 us a record (0.21x), 2.3 times cheaper. bench/bench_audit.py measures
the whole receiver with and without, in the same run (docs/audit.md).

Duplicates: the app puts this sink behind the same duplicate check as the
metrics sink (docs/reliability.md), so a message a client resent after a lost
ack is audited once, as it is counted once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from .forward import ForwardError, Limits, decode_packed
from .forward.events import Message
from .metrics import MetricsConfig
from .metrics.audit import SensitiveMetrics
from .records import Normaliser, NormaliserConfig
from .records.sensitive import TRUNCATED, ScanLimits, SensitiveScanner

log = logging.getLogger(__name__)

#: The smallest scan bound accepted: a request log line (about 500 characters) is scanned whole.
MIN_SCAN_CHARS = 1024
#: The largest: 16 Mi characters, about 100 ms of scanning for one record (see :class:`AuditConfig`).
MAX_SCAN_CHARS = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """The ``[audit]`` section.

    ``sensitive``: scan every record for likely secrets and personal data
    (off by default: each record is decoded a second time and scanned, which
    cut one receiver's records/s to 0.13x-0.21x in bench/bench_audit.py; docs/audit.md).

    ``max_chars`` and ``max_string_chars`` bound what one record costs: at
    most ``max_chars`` characters of a record's strings are looked at, each
    string cut at ``max_string_chars``; a record past either is counted in
    ``<ns>_sensitive_scans_truncated_total``. The defaults are
    :class:`~qwen_fluent.records.sensitive.ScanLimits`' (a request log is about
    500 characters, a logged prompt or header map a few KiB; 64 KiB bounds a
    4 MiB log line to 0.25 to 0.4 ms). Raise them if prompts are logged whole
    and the truncated count grows; the cost grows linearly with them.
    """

    sensitive: bool = False
    max_chars: int = ScanLimits.max_chars
    max_string_chars: int = ScanLimits.max_string_chars

    def __post_init__(self) -> None:
        # Bounds: a record can be up to [limits] max_decompressed_bytes (64 MiB); 16 Mi characters
        # scanned is ~100 ms of event loop per record, past which one record stalls every client.
        for name in ("max_chars", "max_string_chars"):
            value = getattr(self, name)
            if type(value) is not int or not (MIN_SCAN_CHARS <= value <= MAX_SCAN_CHARS):
                raise ValueError(f"[audit] {name} must be an integer {MIN_SCAN_CHARS}..{MAX_SCAN_CHARS}, "
                                 f"got {value!r}")

    def limits(self) -> ScanLimits:
        """The scanner's limits for this section."""
        return ScanLimits(max_chars=self.max_chars, max_string_chars=self.max_string_chars)



class AuditSink:
    """``sink(message)``: scan each record of a message and count what was found, by kind and pod.

    Counted once per message into :attr:`metrics` (one lock, one dict update
    per kind found). Never raises: the audit must not cost a record its
    metrics nor a client its ack. A record the scanner fails on is counted in
    ``<ns>_sensitive_scan_errors_total``. A deferred PackedForward payload is
    decoded here with the receiver's decode limits. One the general decoder
    refuses rarely gets here (the metrics sink, before this one in the fan-out,
    raises first and the server closes the connection without an ack); one that
    does, because the metrics' typed path took it, counts as scanned and
    truncated (its ``size`` option's records, or 1): not looked at, never clean.
    """

    __slots__ = ("metrics", "scanner", "_source", "_limits", "_logged", "_clock")

    def __init__(self, metrics: SensitiveMetrics, scanner: SensitiveScanner | None = None,
                 records: NormaliserConfig | None = None, limits: Limits | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.scanner = scanner or SensitiveScanner()
        # The normaliser's own resolver: the same namespace and pod a record's request metrics carry,
        # cut at the same max_label_length, from bounded caches (records/source.py).
        self._source = Normaliser(records).source
        self._limits = limits if limits is not None else Limits()
        self._logged = False
        self._clock = clock

    @classmethod
    def from_config(cls, audit: AuditConfig, metrics: MetricsConfig | None, records: NormaliserConfig | None,
                    limits: Limits | None) -> AuditSink:
        """The sink for a receiver's configuration, with its own :class:`SensitiveMetrics` to register."""
        return cls(SensitiveMetrics(metrics), SensitiveScanner(audit.limits()), records, limits)

    def __call__(self, message: Message) -> None:
        entries: Any = message.entries
        if message.payload is not None:
            try:
                entries = decode_packed(message, self._limits).entries
            except ForwardError:
                # Past the decode limits, yet taken by the metrics' typed path (which bounds its work
                # differently): not looked at, so counted as cut at the bound, never as clean.
                size = message.options.get("size")
                n = size if type(size) is int and size > 0 else 1
                self.metrics.add(n, n, 0, {}, self._clock())
                return
        tag = message.tag
        scan = self.scanner.scan
        found: dict[tuple[str, str, str], int] = {}
        truncated = errors = 0
        for entry in entries:
            record = entry[1]
            try:
                kinds = scan(record)
            except Exception as exc:  # noqa: BLE001 - a scanner bug: counted, the type logged once
                errors += 1
                self._error(exc)
                continue
            if not kinds:
                continue
            if TRUNCATED in kinds:
                truncated += 1
                if len(kinds) == 1:
                    continue
            meta = record.get("kubernetes") if type(record) is dict else None
            source, _ = self._source(meta, tag)
            for kind in kinds:
                if kind != TRUNCATED:
                    key = (kind, source.namespace, source.pod)
                    found[key] = found.get(key, 0) + 1
        self.metrics.add(len(entries), truncated, errors, found, self._clock())

    def _error(self, exc: Exception) -> None:
        if not self._logged:
            self._logged = True
            # The type only: an exception's message may quote the text it failed on.
            log.error("the sensitive-data scanner failed on a record (%s); counted in "
                      "%s_sensitive_scan_errors_total, further failures not logged",
                      type(exc).__name__, self.metrics.namespace)
