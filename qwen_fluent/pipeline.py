"""The record pipeline between the Forward server and the metrics: :class:`MetricsSink`.

The server hands every decoded :class:`~qwen_fluent.forward.events.Message`
to a sink; this one normalises each entry's record and lets
:class:`~qwen_fluent.metrics.LLMMetrics` count it. Accounting follows the
house rule "counted once, or rejected with a reason": every entry of the
message becomes ``stats.records["accepted"]`` or
``stats.records["unrecognised"]`` (with its reason in
``qwen_fluent_unrecognised_records_total``). The server counts the other two
outcomes (``invalid`` entries, which never reach ``entries``, and
``skipped_signal`` messages); for a deferred packed payload, which only the
sink decodes, the sink counts its invalid entries.

Two paths, one result. A message whose entries the connection decoded (the
Message and Forward modes, or any mode when the server does not defer) goes
record by record through the general normaliser and ``observe``: the
reference. A PackedForward payload the connection deferred is decoded in one
typed pass when every record is a request log
(:func:`~qwen_fluent.forward.split_packed` with
:data:`~qwen_fluent.records.typed.RequestRecord`), else split into raw records
of which the request logs decode into typed structs
(:mod:`qwen_fluent.records.typed`); the message is counted column by column
(:mod:`qwen_fluent.metrics.fast`), and the records the typed decoder refuses
are decoded and normalised the general way.
Records with no usable measurement among them (a server's warning lines,
vLLM's stats lines) are decided by the general normaliser first, and when
none of them is a request the others are still counted by columns. Where the
columnar order could change a result, the message goes record by record
instead. ``tests/metrics/test_fast_path.py`` checks that both paths
give the same samples.
"""

from __future__ import annotations

import logging
import time
from operator import attrgetter

import msgspec
from collections.abc import Callable
from typing import Any

from .forward import ForwardError, Limits, decode_packed, decode_record, entry_seconds, is_map, split_packed
from .forward.decode import GROUP_MARKER, ObjectBudget
from .forward.events import Message
from .forward.scan import PackedScanner
from .logsample import LogSampler
from .metrics import LLMMetrics
from .metrics.fast import FastRequests, scanned_undecided, typed_undecided
from .records import Normaliser
from .records.events import NO_SOURCE, Outcome, RequestEvent, Unrecognised
from .records.reasons import INTERNAL_ERROR
from .records.typed import (
    COLUMNS,
    MAX_TYPED_CHARS,
    MAX_TYPED_KUBERNETES,
    LeanRequestRecord,
    RequestRecord,
    decode_requests,
)
from .records.values import epoch_seconds
from .stats import ReceiverStats

log = logging.getLogger(__name__)

_kubernetes = attrgetter("kubernetes")
_timestamp = attrgetter("timestamp")


class MetricsSink:
    """``sink(message)``: normalise and observe each record of a message.

    ``normaliser`` is a :class:`~qwen_fluent.records.Normaliser` (or any
    ``(record, tag) -> Outcome`` callable, which turns the fast path off).
    Per record the cost is the normaliser, ``metrics.observe`` and one type
    check; the stats counters are bumped once per message. Entry metadata
    (Fluent Bit's ``[[time, metadata], record]`` form) is not used:
    everything the metrics need is in the record. A request record without
    a usable timestamp of its own counts at its entry's time (exemplars,
    last-request time), read as the normaliser reads a ``timestamp``, or at
    the message's receive time where the entry's time is no usable time
    either; both paths do the same (:meth:`_stamp_entries`).

    Every record normalised the general way that comes out unrecognised is
    offered to an :class:`UnrecognisedLog` (a sampled info line: reason, tag,
    keys); records the typed fast path takes never reach it.

    A normaliser or aggregator bug must not lose a record silently nor stop
    the connection: an exception is logged (once per sink, with traceback)
    and the record counted as unrecognised with reason ``internal_error``.
    A deferred payload the general decoder refuses raises its
    :class:`~qwen_fluent.forward.ForwardError` before anything is counted,
    so the server closes the connection without an ack, as it would have.
    """

    __slots__ = ("_normalise", "_metrics", "_observe", "_stats", "_logged", "_limits", "_fast", "_seconds", "_budget",
                 "_unrecognised", "_scanner")

    def __init__(self, normaliser: Callable[[Any, Any], Outcome], metrics: LLMMetrics, stats: ReceiverStats,
                 limits: Limits | None = None, fast: bool = True, scan: bool = True) -> None:
        self._normalise = normaliser
        self._metrics = metrics
        self._observe = metrics.observe
        self._stats = stats
        self._logged = False
        self._unrecognised = UnrecognisedLog()
        self._limits = limits if limits is not None else Limits()
        self._fast = (FastRequests(metrics, normaliser, self._limits)
                      if fast and isinstance(normaliser, Normaliser) else None)
        #: Reads a payload of request logs straight into columns, where the C extension is built
        #: (``scan=False``: never; the typed path then reads every payload).
        scanner = PackedScanner(COLUMNS, MAX_TYPED_CHARS, MAX_TYPED_KUBERNETES) if scan and self._fast else None
        self._scanner = scanner if scanner is not None and scanner.available else None
        #: One message's maps, arrays and ext values decoded the general way (decode_record).
        self._budget = ObjectBudget(self._limits.max_objects)
        #: Reads a record's ``timestamp`` (and an entry's time, for a record without one).
        self._seconds = normaliser.timestamp if isinstance(normaliser, Normaliser) else epoch_seconds

    @property
    def scanning(self) -> bool:
        """Whether payloads of request logs are read by the C scanner (``qwen_fluent.forward.scan``)."""
        return self._scanner is not None

    def __call__(self, message: Message) -> None:
        now = time.time()
        with self._metrics.lock:
            if message.payload is None:
                self._entries(message.entries, message.tag, now)
            else:
                self._packed(message, now)

    # -- the reference: record by record ---------------------------------------

    def _outcome(self, record: Any, tag: Any, quiet: bool = False) -> Outcome:
        """The normaliser's outcome for ``record``; an unrecognised one is offered to the sampled log unless
        ``quiet`` (the caller logs it once it counts it)."""
        try:
            outcome = self._normalise(record, tag)
        except Exception:  # noqa: BLE001 - counted as internal_error, logged once; never expected
            self._internal_error()
            outcome = Unrecognised(INTERNAL_ERROR, NO_SOURCE)
        if type(outcome) is Unrecognised and not quiet:  # the only cost on the accepted path: this type check
            self._unrecognised(outcome.reason, tag, record)
        return outcome

    def _count(self, outcome: Outcome, now: float) -> bool:
        """Observe one outcome; ``True`` if it was accepted (anything but Unrecognised)."""
        try:
            self._observe(outcome, now)
        except Exception:  # noqa: BLE001 - as above
            self._internal_error()
            self._observe(Unrecognised(INTERNAL_ERROR, NO_SOURCE))
            return False
        return type(outcome) is not Unrecognised

    def _entries(self, entries: list[Any], tag: Any, now: float) -> None:
        accepted = 0
        seconds = self._seconds
        for entry in entries:
            outcome = self._outcome(entry[1], tag)
            when = now
            if type(outcome) is RequestEvent and outcome.timestamp is None:
                when = seconds(entry[0])  # the entry's own time, for a record without one
                if when is None:
                    when = now
            accepted += self._count(outcome, when)
        self._tally(accepted, len(entries) - accepted)

    def _when(self, t: Any, outcome: Outcome, now: float) -> float:
        """The time a record without a timestamp counts at: its entry's (split_packed's raw ``t``), else ``now``."""
        if type(outcome) is RequestEvent and outcome.timestamp is None:
            when = self._seconds(entry_seconds(t))
            if when is not None:
                return when
        return now

    def _stamp_entries(self, recs: list[Any], times: list[Any]) -> None:
        """Give each typed record without a usable ``timestamp`` its entry's time, as the general path uses it.

        The fast path reads ``rec.timestamp`` through the normaliser and falls
        back to the message's receive time; writing the entry's time there makes
        it read what :meth:`_entries` passes for the same record. One parse per
        distinct value: request logs share their stamps.
        """
        seconds = self._seconds
        present = recs if None not in recs else [rec for rec in recs if rec is not None]
        distinct = set(map(_timestamp, present))
        if self._fast is not None:  # the same answers, remembered for the fast path's count (FastRequests.timestamps)
            unusable = {raw for raw, stamp in self._fast.timestamps(distinct).items() if stamp is None}
        else:
            unusable = {raw for raw in distinct if seconds(raw) is None}
        if not unusable:
            return
        for rec, t in zip(recs, times):
            if rec is not None:
                raw = rec.timestamp
                if raw in unusable or raw != raw:  # raw != raw: a NaN, never found in a set by value
                    rec.timestamp = entry_seconds(t)

    def _tally(self, accepted: int, unrecognised: int) -> None:
        records = self._stats.records
        if accepted:
            records["accepted"] += accepted
        if unrecognised:
            records["unrecognised"] += unrecognised

    # -- a deferred packed payload ------------------------------------------------

    def _packed(self, message: Message, now: float) -> None:
        fast = self._fast
        if fast is None:
            self._general(message, now)
            return
        payload, size, most = message.payload or b"", message.options.get("size"), self._limits.max_array_len
        tag = message.tag
        self._budget.reset()
        # The commonest case of all, a message of request logs of the lean shape: scanned into columns
        # in C where the extension is built (qwen_fluent.forward.scan); anything it refuses, or whose
        # columns the fast path refuses, goes on below as before.
        if self._scanner is not None:
            cols = self._scanner.scan(payload, size, most)
            if cols is not None:
                if fast.apply_columns(cols, tag, now):
                    self._tally(cols.n, 0)
                    return
                odd = scanned_undecided(cols)
                if odd and self._scanned_with_others(cols, odd, tag, now):
                    return
        times: list[Any] = []
        # The common case, a message of request logs only: one typed pass over the whole payload,
        # with the lean record when every key is one it knows (a third faster), else the full one.
        # A key it does not know fails it at that record, most often the first: a second pass over
        # the whole payload is paid only where the odd key comes late in the message.
        whole = split_packed(payload, size, most, LeanRequestRecord, times)
        if whole is None:
            whole = split_packed(payload, size, most, RequestRecord, times)
        if whole and max(map(len, map(_kubernetes, whole))) > MAX_TYPED_KUBERNETES:
            self._general(message, now)  # a huge kubernetes map would become a cache key: not on this path
            return
        odd: list[int] = []
        if whole is not None:
            self._stamp_entries(whole, times)
            if fast.apply(whole, tag, now):
                self._tally(len(whole), 0)
                return
            odd = typed_undecided(whole)
        raws = split_packed(payload, size, most, msgspec.Raw, times)
        if raws is None:
            self._general(message, now)
            return
        if whole is not None and not odd:  # all typed requests, but the columns refused it (a cap in reach)
            self._ordered(raws, whole, {}, tag, now, times)
            return
        # Some records are not request logs: those the typed decoder refuses, and those it takes that
        # carry no usable measurement (a log line's record has only keys the lean record knows), are
        # decoded and normalised the general way. Everything that can raise runs before anything is counted.
        if whole is not None:
            typed = list(whole)
            for i in odd:
                typed[i] = None
        else:
            typed = decode_requests(raws)
        if max((len(rec.kubernetes) for rec in typed if rec is not None), default=0) > MAX_TYPED_KUBERNETES:
            self._general(message, now)
            return
        self._stamp_entries(typed, times)
        refused = [i for i, rec in enumerate(typed) if rec is None]
        if not all(is_map(raws[i]) for i in refused):  # an invalid entry: the general decoder counts it
            self._general(message, now)
            return
        others = {i: self._outcome(self._decode(raws[i]), tag) for i in refused}
        requests = [rec for rec in typed if rec is not None]
        if not any(type(o) is RequestEvent for o in others.values()) and fast.apply(requests, tag, now,
                                                                                    list(others.values())):
            # The other records touch only the log, vLLM and prompt families: their order
            # relative to the requests changes nothing.
            accepted = len(requests)
            for outcome in others.values():
                accepted += self._count(outcome, now)
            self._tally(accepted, len(typed) - accepted)
            return
        self._ordered(raws, typed, others, tag, now, times)

    def _scanned_with_others(self, cols: Any, odd: list[int], tag: Any, now: float) -> bool:
        """A scanned payload whose records ``odd`` carry no usable measurement (log lines among request logs):
        those decided by the normaliser, the rest counted from the columns. ``False`` (nothing counted, nothing
        logged) where one of them is a request after all (a failed one with only an id and a status: its
        label set must be admitted in record order) or the columns refuse.

        The other records touch only the log, vLLM and prompt families, so their order relative to the
        requests changes nothing (as for records the typed decoder refuses, :meth:`_packed`).
        """
        bounds = memoryview(cols.records).cast("q")
        payload = cols.payload
        decided = []
        for i in odd:
            record = self._decode(payload[bounds[2 * i]:bounds[2 * i + 1]])
            outcome = self._outcome(record, tag, quiet=True)
            if type(outcome) is RequestEvent:
                return False
            decided.append((record, outcome))
        if not self._fast or not self._fast.apply_columns(cols, tag, now, skip=odd,
                                                          others=[outcome for _, outcome in decided]):
            return False
        accepted = cols.n - len(odd)
        for record, outcome in decided:
            if type(outcome) is Unrecognised:
                self._unrecognised(outcome.reason, tag, record)
            accepted += self._count(outcome, now)
        self._tally(accepted, cols.n - accepted)
        return True

    def _ordered(self, raws: list[Any], typed: list[Any], others: dict[int, Outcome], tag: Any, now: float,
                 times: list[Any]) -> None:
        """Record by record, in order: new label sets are admitted as the reference admits them."""
        fast = self._fast
        assert fast is not None
        events: list[Any] = []
        for i, rec in enumerate(typed):
            event = None
            if rec is not None:
                try:
                    event = fast.event(rec, tag)
                except ForwardError:
                    raise
                except Exception:  # noqa: BLE001 - a fast-path bug: the general path decides
                    event = None
                if event is None:
                    others[i] = self._outcome(self._decode(raws[i]), tag)
            events.append(event)
        accepted = 0
        for i, rec in enumerate(typed):
            event = events[i]
            if event is not None:
                fast.remember(rec, tag, event, now)
                accepted += 1
            else:
                accepted += self._count(others[i], self._when(times[i], others[i], now))
        self._tally(accepted, len(typed) - accepted)

    def _general(self, message: Message, now: float) -> None:
        """The general decoder for the whole payload, which also counts invalid entries (or raises)."""
        decoded = decode_packed(message, self._limits)
        if decoded.invalid:
            self._stats.records["invalid"] += sum(decoded.invalid.values())
        if decoded.group_markers:
            self._stats.records[GROUP_MARKER] += decoded.group_markers
        self._entries(decoded.entries, message.tag, now)

    def _decode(self, raw: Any) -> Any:
        return decode_record(raw, self._limits, self._budget)

    def _internal_error(self) -> None:
        if not self._logged:
            self._logged = True
            log.exception("a record could not be turned into metrics; counted as unrecognised (internal_error)")


class UnrecognisedLog:
    """``log(reason, tag, record)``: a sampled info log line for each kind of unrecognised record.

    The counter ``qwen_fluent_unrecognised_records_total{reason}`` says how
    many; this says which: the reason, the tag and the record's keys, never
    its values (records carry prompts, user ids and tokens a log must not
    copy). ``qwen-fluent explain`` takes one such record and says why in full.

    Bounded in lines and in memory. Per reason, the first :attr:`FIRST` records
    are logged, then at most one every :attr:`INTERVAL` seconds, saying how many
    went unlogged since the last line: a Fluent Bit forwarding a whole unparsed
    log at 10k records/s then writes one line a minute per reason, not 10k a
    second. At most :attr:`MAX_KEYS` keys of a record are listed, each cut at
    :attr:`MAX_KEY_CHARS`, and the tag at :attr:`MAX_TAG_CHARS`. State is two
    small dicts keyed by reason; the normaliser's reasons are a fixed set (9),
    and past :attr:`MAX_REASONS` (a sink fed by some other normaliser) further
    reasons share one slot.
    """

    #: Records logged per reason before sampling starts: enough to see the
    #: variety of a misconfigured input (a few shapes) at start-up.
    FIRST = 5
    #: Seconds between two sampled lines per reason afterwards (a minute: a
    #: Prometheus alert on the counter fires on the scale of minutes too).
    INTERVAL = 60.0
    #: Keys listed per record: a request log has about 15, a Kubernetes
    #: envelope about 6; 32 shows every realistic shape whole.
    MAX_KEYS = 32
    #: Characters kept of a key, and of the tag (a tail tag names the log file: 100-200).
    MAX_KEY_CHARS = 64
    MAX_TAG_CHARS = 256
    #: Distinct reasons tracked; the normaliser has 9 (records/reasons.py), as in
    #: metrics/llm.py's MAX_UNRECOGNISED_REASONS.
    MAX_REASONS = 32

    __slots__ = ("sampler",)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.sampler = LogSampler(self.FIRST, self.INTERVAL, self.MAX_REASONS, clock)

    def __call__(self, reason: str, tag: Any, record: Any) -> None:
        sampled = self.sampler(reason)
        if sampled is not None:
            shown, more = sampled
            log.info("unrecognised record (%s) tag=%s %s%s", shown, self._tag(tag), self.keys(record), more)

    @classmethod
    def _tag(cls, tag: Any) -> str:
        text = tag.decode("utf-8", "replace") if isinstance(tag, (bytes, bytearray)) else str(tag)
        return repr(text[: cls.MAX_TAG_CHARS])

    @classmethod
    def keys(cls, record: Any) -> str:
        """``keys=['log', 'stream']`` for a map (never the values), ``type=list`` for anything else."""
        if not isinstance(record, dict):
            return f"type={type(record).__name__}"
        names = []
        for i, key in enumerate(record):
            if i == cls.MAX_KEYS:
                names.append(f"... {len(record) - cls.MAX_KEYS} more")
                break
            text = key.decode("utf-8", "replace") if isinstance(key, (bytes, bytearray)) else str(key)
            names.append(repr(text[: cls.MAX_KEY_CHARS]))
        return f"keys=[{', '.join(names)}]"
