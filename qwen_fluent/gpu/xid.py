"""XID errors: NVML's critical-error events, counted by a background thread.

An XID is the driver's code for a GPU fault (13: graphics engine exception,
48: double-bit ECC error, 79: fallen off the bus, ...; NVIDIA's "XID Errors"
document lists them). NVML delivers them as events: a thread blocks in
``nvmlEventSetWait`` and counts each one by device and code. They cannot be
read at scrape time: an event not waited for is lost once the driver's queue
wraps.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from qwen_fluent.gpu.errors import TIMEOUT, code_of
from qwen_fluent.gpu.reader import NvmlReader

log = logging.getLogger("qwen_fluent.gpu")

# nvml.h nvmlEventTypeXidCriticalError, used when the module handed in lacks it.
_XID_EVENT = 0x0000000000000008

#: How long one nvmlEventSetWait blocks. It bounds how long close() waits for
#: the thread, and costs one wake-up per interval; dcgm-exporter's XID field
#: is sampled at its default 30 s interval, so half a second loses nothing.
POLL_MS = 500

#: Pause after a failed wait other than a timeout, so that a broken event set
#: (a GPU gone, a driver unloading) is retried a few times a minute instead of
#: spinning and counting a failure per loop.
ERROR_BACKOFF_SECONDS = 5.0

#: Distinct XID codes kept per GPU before further ones count as ``xid="other"``.
#: NVIDIA documents about 150 codes, and a GPU that has logged more than a few
#: distinct ones needs draining, not finer labels; 32 bounds the label set.
MAX_XIDS_PER_GPU = 32


class XidWatcher:
    """Counts XID events per (gpu, uuid, name, xid) in a daemon thread.

    :meth:`start` registers every GPU that supports XID events and starts the
    thread (if at least one did); :meth:`stop` ends it and frees the event
    set. :meth:`counts` is safe to call from any thread.
    """

    def __init__(self, nvml: Any, reader: NvmlReader, *, poll_ms: int = POLL_MS) -> None:
        self.nvml = nvml
        self.reader = reader
        self.poll_ms = poll_ms
        # (uuid, xid) -> events; the gpu/name labels are looked up when read,
        # so an event seen before the first scrape joins the same series
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self.registered: list[str] = []  # uuids watched

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Register XID events on every GPU that supports them; start the thread. True if it runs."""
        nvml, reader = self.nvml, self.reader
        bit = getattr(nvml, "nvmlEventTypeXidCriticalError", _XID_EVENT)
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except Exception as exc:
            reader.count_error("nvmlEventSetCreate", exc)
            return False
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            reader.count_error("nvmlDeviceGetCount", exc)
            count = 0
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = nvml.nvmlDeviceGetUUID(handle)
            except Exception as exc:
                reader.count_error("nvmlDeviceGetHandleByIndex", exc)
                continue
            try:
                supported = nvml.nvmlDeviceGetSupportedEventTypes(handle)
            except Exception as exc:
                reader.count_error("nvmlDeviceGetSupportedEventTypes", exc)
                continue
            if not supported & bit:
                continue
            try:
                nvml.nvmlDeviceRegisterEvents(handle, bit, self._event_set)
            except Exception as exc:
                reader.count_error("nvmlDeviceRegisterEvents", exc)
                continue
            self.registered.append(uuid if isinstance(uuid, str) else uuid.decode())
        if not self.registered:
            self._free()
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(bit,), name="qwen-gpu-xid", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """End the thread (within one poll interval) and free the event set."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_ms / 1000.0 + ERROR_BACKOFF_SECONDS)
            self._thread = None
        self._free()

    def _free(self) -> None:
        if self._event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._event_set)
            except Exception:  # shutting down: nothing left to report to
                pass
            self._event_set = None

    def counts(self) -> dict[tuple[str, str, str, str], int]:
        """(gpu, uuid, name, xid) -> events seen, labelled with the reader's current names."""
        with self._lock:
            counts = dict(self._counts)
        labels = self.reader.labels_by_uuid
        result: dict[tuple[str, str, str, str], int] = {}
        for (uuid, xid), n in counts.items():
            gpu, name = labels.get(uuid, ("", ""))
            result[(gpu, uuid, name, xid)] = n
        return result

    def _run(self, bit: int) -> None:
        nvml, reader = self.nvml, self.reader
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait(self._event_set, self.poll_ms)
            except Exception as exc:
                if code_of(exc) == TIMEOUT:
                    continue
                reader.count_error("nvmlEventSetWait", exc)
                self._stop.wait(ERROR_BACKOFF_SECONDS)
                continue
            if not data.eventType & bit:
                continue
            try:
                self._record(data)
            except Exception:  # a bad event must not end the watcher
                log.exception("could not record an NVML XID event")

    def _record(self, data: Any) -> None:
        try:
            uuid = self.nvml.nvmlDeviceGetUUID(data.device)
            uuid = uuid if isinstance(uuid, str) else uuid.decode()
        except Exception as exc:
            self.reader.count_error("nvmlDeviceGetUUID", exc)
            uuid = ""
        xid = str(int(data.eventData))
        with self._lock:
            seen = {key[1] for key in self._counts if key[0] == uuid}
            if xid not in seen and len(seen) >= MAX_XIDS_PER_GPU:
                xid = "other"
            first = (uuid, xid) not in self._counts
            self._counts[(uuid, xid)] += 1
        if first:  # one line per (GPU, code): an XID storm must not flood the log
            gpu = self.reader.labels_by_uuid.get(uuid, ("?", ""))[0]
            log.warning(
                "GPU %s (%s) reported XID %s; further ones are counted in *_gpu_xid_errors_total",
                gpu,
                uuid or "unknown uuid",
                xid,
            )
