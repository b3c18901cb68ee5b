"""The GPU collector: NVML read at scrape time, cached, exposed as ``<namespace>_gpu_*``.

:class:`GpuCollector` is a prometheus_client custom collector. Its
:meth:`~GpuCollector.collect` runs on the scrape (HTTP server) thread, never
on the receiver's asyncio loop, because NVML calls block (tens of
microseconds each normally, seconds when the driver is busy or a GPU is
failing). One read is served to every scraper for ``cache_seconds``: the
lock makes concurrent scrapers wait for the read in progress and share it,
so several Prometheus replicas cannot multiply the load on NVML.

Without NVML (no driver, no GPU, CI) it exposes ``<namespace>_gpu_nvml_up 0``
and the reason in ``<namespace>_gpu_nvml_errors_total``, logs one line, and
tries again once a minute (the driver may be installed after we start, as
the GPU operator does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from qwen_fluent.gpu.attribution import PodIndex, ProcessAttributor
from qwen_fluent.gpu.errors import NvmlUnavailable, reason_of
from qwen_fluent.gpu.reader import CLOCK_EVENT_REASONS, NvmlReader, Snapshot
from qwen_fluent.gpu.xid import XidWatcher

log = logging.getLogger("qwen_fluent.gpu")

#: Time between two nvmlInit attempts while NVML is unavailable. A failed
#: attempt costs a dlopen (under a millisecond); once a minute notices a
#: driver installed after start (GPU operator) within a few scrapes, and is
#: what the NVIDIA device plugin does when it waits for the driver.
INIT_RETRY_SECONDS = 60.0

DEVICE_LABELS = ("gpu", "uuid", "name")
INFO_LABELS = ("gpu", "uuid", "name", "driver_version", "pci_bus_id", "parent_gpu", "mig")
PROCESS_LABELS = ("gpu", "uuid", "pid", "namespace", "pod", "container")

#: Per-device value families: reader key -> (kind, help). The family name is
#: ``<namespace>_gpu_<key>`` (a counter's ``_total`` is added by the exposition).
VALUE_FAMILIES: dict[str, tuple[str, str]] = {
    "memory_used_bytes": ("gauge", "Device memory in use (NVML memory info v2: excludes the driver's reservation)."),
    "memory_free_bytes": ("gauge", "Device memory free."),
    "memory_total_bytes": ("gauge", "Device memory in total."),
    "utilization_ratio": ("gauge", "Fraction of the last sample period (1/6 s to 1 s) in which a kernel ran."),
    "memory_utilization_ratio": ("gauge", "Fraction of the last sample period in which device memory was read or written."),
    "temperature_celsius": ("gauge", "GPU core temperature."),
    "power_watts": ("gauge", "Power draw of the board."),
    "power_limit_watts": ("gauge", "Power limit the driver enforces now."),
    "energy_joules_total": ("counter", "Energy used since the driver was loaded."),
    "sm_clock_hertz": ("gauge", "Current SM clock."),
    "memory_clock_hertz": ("gauge", "Current memory clock."),
}


def family_names(namespace: str = "qwen") -> list[str]:
    """Every metric family name this collector can expose (as written in the exposition)."""
    p = f"{namespace}_gpu"
    return [
        f"{p}_nvml_up",
        f"{p}_info",
        f"{p}_up",
        *(f"{p}_{key}" for key in VALUE_FAMILIES),
        f"{p}_clock_event_active",
        f"{p}_ecc_errors_total",
        f"{p}_xid_errors_total",
        f"{p}_compute_processes",
        f"{p}_process_memory_used_bytes",
        f"{p}_nvml_errors_total",
        f"{p}_collection_duration_seconds",
    ]


class GpuCollector:
    """prometheus_client collector of NVML GPU metrics.

    ``nvml`` is the pynvml module or a stand-in with the same functions
    (the tests' ``tests/support/fake_nvml.py``); ``None`` imports pynvml.
    Call :meth:`start` once (it may block in nvmlInit: call it before the
    event loop runs, or through ``asyncio.to_thread``), register the collector,
    and :meth:`close` on shutdown. :meth:`collect` starts NVML itself if
    :meth:`start` was not called, without the XID thread.
    """

    def __init__(
        self,
        namespace: str = "qwen",
        *,
        nvml: Any = None,
        cache_seconds: float = 1.0,
        process_attribution: bool = True,
        proc_root: str = "/proc",
        log_root: str = "/var/log",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must be >= 0, not {cache_seconds!r}")
        self.namespace = namespace
        self.cache_seconds = cache_seconds
        self._nvml_arg = nvml
        self._clock = clock
        self._attributor = (
            ProcessAttributor(proc_root, index=PodIndex(log_root, clock=clock)) if process_attribution else None
        )
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._reader: NvmlReader | None = None
        self._xid: XidWatcher | None = None
        self._want_xid = False
        self._tried = False
        self._retry_at = 0.0
        self._logged_down = False
        self._closed = False
        self._init_errors: Counter[tuple[str, str]] = Counter()  # before a reader exists
        self._families: list[Metric] | None = None
        self._taken_at = 0.0
        self.reads = 0  # NVML reads made (cache misses); for tests and the bench
        self.unavailable: NvmlUnavailable | None = None  # why NVML is down, if it is

    # -- life cycle ------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while NVML is initialised."""
        return self._reader is not None

    def start(self) -> bool:
        """Initialise NVML and start the XID thread. Returns whether NVML is up; never raises."""
        with self._lock:
            self._want_xid = True
            if not self._tried or (self._reader is None and self._clock() >= self._retry_at):
                self._init_locked()
            return self._reader is not None

    def close(self) -> None:
        """Stop the XID thread and shut NVML down. The collector then reports ``nvml_up 0``."""
        with self._lock:
            self._closed = True
            self._want_xid = False
            if self._xid is not None:
                self._xid.stop()
                self._xid = None
            if self._reader is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:  # shutting down: count and carry on
                    self._init_errors[("nvmlShutdown", reason_of(exc))] += 1
                self._reader = None
            self._families = None

    def _init_locked(self) -> None:
        self._tried = True
        self._retry_at = self._clock() + INIT_RETRY_SECONDS
        nvml = self._nvml_arg
        try:
            if nvml is None:
                import pynvml as nvml  # deferred: the receiver must run where it is missing
            nvml.nvmlInit()
        except Exception as exc:
            reason = reason_of(exc)
            self._init_errors[("nvmlInit", reason)] += 1
            self.unavailable = NvmlUnavailable(reason, str(exc) or type(exc).__name__)
            if not self._logged_down:
                self._logged_down = True
                log.warning(
                    "%s; GPU metrics are off (%s_gpu_nvml_up 0), retrying every %.0f s",
                    self.unavailable,
                    self.namespace,
                    INIT_RETRY_SECONDS,
                )
            return
        self._nvml = nvml
        self._reader = NvmlReader(nvml, self._attributor)
        self.unavailable = None
        self._families = None
        if self._logged_down:
            log.warning("NVML is available now: GPU metrics are on")
            self._logged_down = False
        if self._want_xid and self._xid is None:
            self._xid = XidWatcher(nvml, self._reader)
            if not self._xid.start():
                self._xid = None

    # -- prometheus_client collector protocol ------------------------------------

    def describe(self) -> list[Metric]:
        """Nothing: registering must not touch NVML (the registry calls describe at register time)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The metric families: from cache if younger than ``cache_seconds``, else read now."""
        with self._lock:
            now = self._clock()
            if self._families is not None and now - self._taken_at < self.cache_seconds:
                return list(self._families)
            if not self._closed and self._reader is None and (not self._tried or now >= self._retry_at):
                self._init_locked()
            started = time.perf_counter()
            snapshot = self._reader.read() if self._reader is not None else None
            self.reads += snapshot is not None
            families = self._families_for(snapshot)
            duration = GaugeMetricFamily(
                f"{self.namespace}_gpu_collection_duration_seconds",
                "Time the last NVML read and its exposition took.",
                value=time.perf_counter() - started,
            )
            families.append(duration)
            self._families = families
            self._taken_at = self._clock()
            return list(families)

    # -- exposition ----------------------------------------------------------------

    def _errors(self) -> dict[tuple[str, str], int]:
        errors = Counter(self._init_errors)
        if self._reader is not None:
            errors.update(self._reader.errors_copy())
        return dict(errors)

    def _families_for(self, snapshot: Snapshot | None) -> list[Metric]:
        p = f"{self.namespace}_gpu"
        nvml_up = GaugeMetricFamily(f"{p}_nvml_up", "1 if NVML is loaded and initialised, else 0.")
        nvml_up.add_metric([], 1.0 if snapshot is not None else 0.0)
        errors = CounterMetricFamily(
            f"{p}_nvml_errors", "NVML calls that failed, by function and reason.", labels=("call", "reason")
        )
        for (call, reason), n in sorted(self._errors().items()):
            errors.add_metric([call, reason], n)
        if snapshot is None:
            return [nvml_up, errors]

        info = GaugeMetricFamily(f"{p}_info", "GPU and MIG device identity; always 1.", labels=INFO_LABELS)
        device_up = GaugeMetricFamily(
            f"{p}_up", "1 if the device was read, 0 if it is lost or gave no handle.", labels=DEVICE_LABELS
        )
        values: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for key, (kind, doc) in VALUE_FAMILIES.items():
            if kind == "counter":
                values[key] = CounterMetricFamily(f"{p}_{key}", doc, labels=DEVICE_LABELS)
            else:
                values[key] = GaugeMetricFamily(f"{p}_{key}", doc, labels=DEVICE_LABELS)
        clock_events = GaugeMetricFamily(
            f"{p}_clock_event_active",
            "1 if the reason is holding the clocks down now (throttling), else 0.",
            labels=(*DEVICE_LABELS, "reason"),
        )
        ecc = CounterMetricFamily(
            f"{p}_ecc_errors",
            "Device memory ECC errors since the driver was loaded (volatile counters).",
            labels=(*DEVICE_LABELS, "type"),
        )
        xid = CounterMetricFamily(
            f"{p}_xid_errors", "XID critical-error events seen since start, by XID code.", labels=(*DEVICE_LABELS, "xid")
        )
        processes = GaugeMetricFamily(
            f"{p}_compute_processes", "Compute processes on the device (all, even beyond the exposed limit).", labels=DEVICE_LABELS
        )
        process_memory = GaugeMetricFamily(
            f"{p}_process_memory_used_bytes",
            "Device memory used by one compute process, with its pod where attributable.",
            labels=PROCESS_LABELS,
        )

        driver = snapshot.driver_version
        for dev in snapshot.devices:
            labels = [dev.gpu, dev.uuid, dev.name]
            device_up.add_metric(labels, 1.0 if dev.up else 0.0)
            info.add_metric([dev.gpu, dev.uuid, dev.name, driver, dev.pci_bus_id, dev.parent_gpu, dev.mig], 1.0)
            for key, value in dev.values.items():
                values[key].add_metric(labels, value)
            if dev.clock_event_reasons is not None:
                mask = dev.clock_event_reasons
                for bit, reason in CLOCK_EVENT_REASONS:
                    clock_events.add_metric([*labels, reason], 1.0 if mask & bit else 0.0)
            for kind, count in dev.ecc.items():
                ecc.add_metric([*labels, kind], count)
            if dev.process_count is not None:
                processes.add_metric(labels, dev.process_count)
            for proc in dev.processes:
                where = proc.where
                process_memory.add_metric(
                    [dev.gpu, dev.uuid, str(proc.pid), where.namespace, where.pod, where.container], proc.used_bytes
                )
        if self._xid is not None:
            for (gpu, uuid, name, code), n in sorted(self._xid.counts().items()):
                xid.add_metric([gpu, uuid, name, code], n)
        return [
            nvml_up,
            info,
            device_up,
            *values.values(),
            clock_events,
            ecc,
            xid,
            processes,
            process_memory,
            errors,
        ]
