"""One read of every GPU through NVML, as plain data.

:class:`NvmlReader` walks the devices NVML lists (and, on a GPU in MIG mode,
its MIG devices) and returns a :class:`Snapshot`: numbers already in base
units, absent where NVML did not give them. It never raises for one device's
failure: a call that fails is counted in :attr:`NvmlReader.errors` by
``(call, reason)`` and its value is left out; a GPU that is lost
(``NVML_ERROR_GPU_IS_LOST``) is returned with ``up=False``; the others are read
as usual.

The reader is sans-exposition (it knows nothing of Prometheus) so that the
collector and ``qwen-fluent gpu`` share it. It is not thread-safe: the
collector calls :meth:`NvmlReader.read` under its lock. Only
:meth:`NvmlReader.count_error` may be called from another thread (the XID
watcher).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable, NamedTuple

from qwen_fluent.gpu.attribution import UNATTRIBUTED, PodRef, ProcessAttributor
from qwen_fluent.gpu.errors import (
    ARGUMENT_VERSION_MISMATCH,
    FUNCTION_NOT_FOUND,
    GPU_IS_LOST,
    NOT_FOUND,
    NOT_SUPPORTED,
    DeviceLost,
    code_of,
    reason_of,
)

# nvml.h enum values, used when the module handed in does not define them.
_NVML_TEMPERATURE_GPU = 0
_NVML_CLOCK_SM = 1
_NVML_CLOCK_MEM = 2
_NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
_NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
_NVML_VOLATILE_ECC = 0
_NVML_DEVICE_MIG_ENABLE = 1
_NVML_MEMORY_V2 = 0x02000028

#: Bits of ``nvmlDeviceGetCurrentClocksEventReasons`` (nvml.h
#: ``nvmlClocksEventReason*``) and the ``reason`` label each becomes. The
#: names follow nvidia-smi's ``clocks_event_reasons.*`` query fields.
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)

#: Most compute processes exposed per device (largest memory first). NVIDIA's
#: MPS serves at most 48 clients per device on Volta and later (MPS docs,
#: "Limitations"), and without MPS a GPU running more than a few dozen CUDA
#: contexts is out of memory; 64 keeps a fully packed MPS GPU whole while
#: bounding the ``pid`` label set. ``qwen_gpu_compute_processes`` still counts all.
MAX_PROCESSES_PER_DEVICE = 64

#: The per-device values a :class:`DeviceReading` may hold, in base units.
VALUE_KEYS: tuple[str, ...] = (
    "memory_used_bytes",
    "memory_free_bytes",
    "memory_total_bytes",
    "utilization_ratio",
    "memory_utilization_ratio",
    "temperature_celsius",
    "power_watts",
    "power_limit_watts",
    "energy_joules_total",
    "sm_clock_hertz",
    "memory_clock_hertz",
)


class ProcessReading(NamedTuple):
    """One compute process on one device; ``used_bytes`` summed over NVML's entries for the pid."""

    pid: int
    used_bytes: float
    where: PodRef


class DeviceReading(NamedTuple):
    """What NVML said about one GPU or MIG device in one read.

    ``gpu`` is the NVML index (``"0"``) or, for a MIG device,
    ``"<parent index>/<MIG device index>"``. ``values`` holds only what NVML
    answered (see :data:`VALUE_KEYS`); ``clock_event_reasons`` and ``ecc`` are
    ``None`` / empty when unsupported. ``up`` is False when the device could
    not be read at all (lost, or no handle): then only the identity is set.
    """

    gpu: str
    uuid: str
    name: str
    pci_bus_id: str
    parent_gpu: str
    mig: str
    up: bool
    values: dict[str, float]
    clock_event_reasons: int | None
    ecc: dict[str, float]
    processes: list[ProcessReading]
    process_count: int | None


class Snapshot(NamedTuple):
    """Every device, in NVML order (a parent GPU before its MIG devices)."""

    driver_version: str
    devices: list[DeviceReading]


_MISSING = object()


class _Identity(NamedTuple):
    uuid: str
    name: str
    pci_bus_id: str


class NvmlReader:
    """Reads every device through ``nvml`` (pynvml or the fake), counting failures.

    ``nvml`` must already be initialised (``nvmlInit``). ``attributor`` labels
    processes with their pod; ``None`` leaves them with their pid only.
    """

    def __init__(self, nvml: Any, attributor: ProcessAttributor | None = None) -> None:
        self.nvml = nvml
        self.attributor = attributor
        #: (call, reason) -> failures; read by the collector, bumped here and by the XID thread
        self.errors: Counter[tuple[str, str]] = Counter()
        self._errors_lock = threading.Lock()
        # (uuid, call, variant) that answered NOT_SUPPORTED / FUNCTION_NOT_FOUND:
        # not asked again, so each is counted once rather than at every scrape
        self._unsupported: set[tuple[str, str, str]] = set()
        self._mig_mode: dict[str, int] = {}  # uuid -> last MIG mode seen
        self._memory_v1: set[str] = set()  # uuids whose driver lacks nvmlDeviceGetMemoryInfo_v2
        self._names: dict[str, tuple[str, str]] = {}  # uuid -> (name, pci bus id): fixed for a device's life
        self._mig_ids: dict[str, str] = {}  # MIG uuid -> "<gi>/<ci>"
        self._by_index: dict[int, _Identity] = {}  # last identity per index, to name a lost GPU
        self.driver_version = ""
        #: uuid -> (gpu, name) of every device seen: the XID watcher's lookup
        self.labels_by_uuid: dict[str, tuple[str, str]] = {}

    # -- failures -----------------------------------------------------------

    def count_error(self, call: str, exc: BaseException) -> str:
        """Count one failure of ``call``; returns its reason. Thread-safe."""
        reason = reason_of(exc)
        with self._errors_lock:
            self.errors[(call, reason)] += 1
        return reason

    def errors_copy(self) -> dict[tuple[str, str], int]:
        """A consistent copy of :attr:`errors`."""
        with self._errors_lock:
            return dict(self.errors)

    def _call(self, uuid: str, call: str, variant: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or ``_MISSING`` after counting the failure.

        Raises :class:`DeviceLost` on ``GPU_IS_LOST``. Remembers calls the
        device does not support and skips them afterwards.
        """
        key = (uuid, call, variant)
        if key in self._unsupported:
            return _MISSING
        try:
            return fn(*args)
        except Exception as exc:  # NVMLError, or anything ctypes raises
            return self._failed(key, exc)

    def _failed(self, key: tuple[str, str, str], exc: Exception) -> Any:
        """Count ``exc`` against ``key``'s call; raise DeviceLost or remember an unsupported call."""
        code = code_of(exc)
        self.count_error(key[1], exc)
        if code == GPU_IS_LOST:
            raise DeviceLost(key[0]) from exc
        if code in (NOT_SUPPORTED, FUNCTION_NOT_FOUND) or isinstance(exc, AttributeError):
            self._unsupported.add(key)
        return _MISSING

    def _fn(self, name: str) -> Callable[..., Any]:
        """``nvml.<name>``; a missing function raises AttributeError when called, counted as function_not_found."""
        fn = getattr(self.nvml, name, None)
        if fn is None:

            def missing(*_args: Any) -> Any:
                raise AttributeError(f"this pynvml has no {name}")

            return missing
        return fn

    def _const(self, name: str, default: int) -> int:
        value = getattr(self.nvml, name, default)
        return value if isinstance(value, int) else default

    # -- reading -------------------------------------------------------------

    def read_driver_version(self) -> str:
        """The driver version, read once (it cannot change while NVML is initialised)."""
        if not self.driver_version:
            value = self._call("", "nvmlSystemGetDriverVersion", "", self._fn("nvmlSystemGetDriverVersion"))
            if value is not _MISSING:
                self.driver_version = _text(value)
        return self.driver_version

    def read(self) -> Snapshot:
        """Read every device once. Never raises for a device's failure."""
        driver = self.read_driver_version()
        count = self._call("", "nvmlDeviceGetCount", "", self._fn("nvmlDeviceGetCount"))
        devices: list[DeviceReading] = []
        if count is _MISSING:
            return Snapshot(driver, devices)
        pods: dict[int, PodRef] = {}  # one cgroup read per pid per snapshot
        for index in range(int(count)):
            devices.extend(self._read_gpu(index, pods))
        return Snapshot(driver, devices)

    @staticmethod
    def _lost(gpu: str, identity: _Identity | None) -> DeviceReading:
        """A GPU that could not be read: its last known identity, ``up=False``, nothing else."""
        uuid, name, bus = identity if identity is not None else ("", "", "")
        return DeviceReading(gpu, uuid, name, bus, "", "", False, {}, None, {}, [], None)

    def _read_gpu(self, index: int, pods: dict[int, PodRef]) -> list[DeviceReading]:
        gpu = str(index)
        known = self._by_index.get(index)
        try:
            handle = self._call(f"#{index}", "nvmlDeviceGetHandleByIndex", "", self._fn("nvmlDeviceGetHandleByIndex"), index)
            if handle is _MISSING:
                return [self._lost(gpu, known)]
            uuid = self._call(f"#{index}", "nvmlDeviceGetUUID", "", self._fn("nvmlDeviceGetUUID"), handle)
            if uuid is _MISSING:
                return [self._lost(gpu, known)]
            uuid = _text(uuid)
            name, bus = self._identity(uuid, handle, with_pci=True)
            identity = _Identity(uuid, name, bus)
            self._by_index[index] = identity
            self.labels_by_uuid[uuid] = (gpu, name)

            mig_enabled = self._mig_enabled(uuid, handle)
            values = self._read_values(uuid, handle, full_gpu=True)
            reasons = self._read_clock_reasons(uuid, handle)
            ecc = self._read_ecc(uuid, handle)
            processes: list[ProcessReading] = []
            process_count: int | None = None
            if not mig_enabled:
                # On a MIG GPU the parent's list needs root and aggregates the
                # instances; each MIG device is asked for its own below.
                processes, process_count = self._read_processes(uuid, handle, pods)
            reading = DeviceReading(gpu, uuid, name, bus, "", "", True, values, reasons, ecc, processes, process_count)
            migs = self._read_migs(index, uuid, handle, bus, pods) if mig_enabled else []
        except DeviceLost:
            return [self._lost(gpu, self._by_index.get(index))]
        return [reading, *migs]

    def _identity(self, uuid: str, handle: Any, *, with_pci: bool) -> tuple[str, str]:
        cached = self._names.get(uuid)
        if cached is not None:
            return cached
        name = self._call(uuid, "nvmlDeviceGetName", "", self._fn("nvmlDeviceGetName"), handle)
        bus = ""
        if with_pci:
            pci = self._call(uuid, "nvmlDeviceGetPciInfo", "", self._fn("nvmlDeviceGetPciInfo"), handle)
            if pci is not _MISSING:
                bus = _text(getattr(pci, "busId", ""))
        if name is _MISSING:
            return "", bus  # not cached: asked again next time
        result = (_text(name), bus)
        self._names[uuid] = result
        return result

    def _mig_enabled(self, uuid: str, handle: Any) -> bool:
        modes = self._call(uuid, "nvmlDeviceGetMigMode", "", self._fn("nvmlDeviceGetMigMode"), handle)
        current = 0 if modes is _MISSING else int(modes[0])
        if self._mig_mode.get(uuid, current) != current:
            # MIG switched on or off: what the GPU supports changed with it
            self._unsupported = {key for key in self._unsupported if key[0] != uuid}
        self._mig_mode[uuid] = current
        return current == self._const("NVML_DEVICE_MIG_ENABLE", _NVML_DEVICE_MIG_ENABLE)

    def _read_memory(self, uuid: str, handle: Any, values: dict[str, float]) -> None:
        call = "nvmlDeviceGetMemoryInfo"
        fn = self._fn(call)
        mem: Any = _MISSING
        if uuid in self._memory_v1:
            mem = self._call(uuid, call, "v1", fn, handle)
        elif (uuid, call, "") not in self._unsupported:
            # v2 keeps the driver's reserved memory out of "used", as recent
            # nvidia-smi does; v1's "used" includes it.
            try:
                mem = fn(handle, self._const("nvmlMemory_v2", _NVML_MEMORY_V2))
            except TypeError:  # a pynvml whose nvmlDeviceGetMemoryInfo takes no version
                self._memory_v1.add(uuid)
            except Exception as exc:
                if code_of(exc) in (FUNCTION_NOT_FOUND, ARGUMENT_VERSION_MISMATCH):
                    self._memory_v1.add(uuid)  # a driver older than v2: not a failure
                else:
                    mem = self._failed((uuid, call, ""), exc)
            if uuid in self._memory_v1:
                mem = self._call(uuid, call, "v1", fn, handle)
        if mem is _MISSING:
            return
        values["memory_used_bytes"] = float(mem.used)
        values["memory_free_bytes"] = float(mem.free)
        values["memory_total_bytes"] = float(mem.total)

    def _read_values(self, uuid: str, handle: Any, *, full_gpu: bool) -> dict[str, float]:
        values: dict[str, float] = {}
        self._read_memory(uuid, handle, values)
        if not full_gpu:
            # NVML answers the rest only for the parent GPU (nvml.h: "not
            # supported on MIG devices"); leaving them out beats a zero.
            return values
        call = self._call
        util = call(uuid, "nvmlDeviceGetUtilizationRates", "", self._fn("nvmlDeviceGetUtilizationRates"), handle)
        if util is not _MISSING:
            values["utilization_ratio"] = util.gpu / 100.0
            values["memory_utilization_ratio"] = util.memory / 100.0
        temp = call(
            uuid,
            "nvmlDeviceGetTemperature",
            "",
            self._fn("nvmlDeviceGetTemperature"),
            handle,
            self._const("NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU),
        )
        if temp is not _MISSING:
            values["temperature_celsius"] = float(temp)
        power = call(uuid, "nvmlDeviceGetPowerUsage", "", self._fn("nvmlDeviceGetPowerUsage"), handle)
        if power is not _MISSING:
            values["power_watts"] = power / 1000.0  # milliwatts
        limit = call(uuid, "nvmlDeviceGetEnforcedPowerLimit", "", self._fn("nvmlDeviceGetEnforcedPowerLimit"), handle)
        if limit is not _MISSING:
            values["power_limit_watts"] = limit / 1000.0  # milliwatts
        energy = call(
            uuid, "nvmlDeviceGetTotalEnergyConsumption", "", self._fn("nvmlDeviceGetTotalEnergyConsumption"), handle
        )
        if energy is not _MISSING:
            values["energy_joules_total"] = energy / 1000.0  # millijoules since the driver loaded
        clock = self._fn("nvmlDeviceGetClockInfo")
        sm = call(uuid, "nvmlDeviceGetClockInfo", "sm", clock, handle, self._const("NVML_CLOCK_SM", _NVML_CLOCK_SM))
        if sm is not _MISSING:
            values["sm_clock_hertz"] = sm * 1e6  # MHz
        mem = call(uuid, "nvmlDeviceGetClockInfo", "mem", clock, handle, self._const("NVML_CLOCK_MEM", _NVML_CLOCK_MEM))
        if mem is not _MISSING:
            values["memory_clock_hertz"] = mem * 1e6  # MHz
        return values

    def _read_clock_reasons(self, uuid: str, handle: Any) -> int | None:
        call = "nvmlDeviceGetCurrentClocksEventReasons"
        key = (uuid, call, "")
        if key not in self._unsupported:
            value = self._call(uuid, call, "", self._fn(call), handle)
            if value is not _MISSING:
                return int(value)
            if key not in self._unsupported:
                return None  # failed for another reason: do not try the old name
        # Drivers before R535 only have the older name of the same call.
        value = self._call(uuid, call, "throttle", self._fn("nvmlDeviceGetCurrentClocksThrottleReasons"), handle)
        return None if value is _MISSING else int(value)

    def _read_ecc(self, uuid: str, handle: Any) -> dict[str, float]:
        ecc: dict[str, float] = {}
        fn = self._fn("nvmlDeviceGetTotalEccErrors")
        counter = self._const("NVML_VOLATILE_ECC", _NVML_VOLATILE_ECC)
        for kind, const, default in (
            ("corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED", _NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", _NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            value = self._call(uuid, "nvmlDeviceGetTotalEccErrors", kind, fn, handle, self._const(const, default), counter)
            if value is not _MISSING:
                ecc[kind] = float(value)
        return ecc

    def _read_processes(
        self, uuid: str, handle: Any, pods: dict[int, PodRef]
    ) -> tuple[list[ProcessReading], int | None]:
        infos = self._call(
            uuid, "nvmlDeviceGetComputeRunningProcesses", "", self._fn("nvmlDeviceGetComputeRunningProcesses"), handle
        )
        if infos is _MISSING:
            return [], None
        used: dict[int, float] = {}
        for info in infos:
            pid = int(info.pid)
            memory = info.usedGpuMemory  # None where the driver cannot say (WDDM, some vGPU)
            used[pid] = used.get(pid, 0.0) + (float(memory) if memory is not None else 0.0)
        ordered = sorted(used.items(), key=lambda item: (-item[1], item[0]))[:MAX_PROCESSES_PER_DEVICE]
        processes = [ProcessReading(pid, memory, self._where(pid, pods)) for pid, memory in ordered]
        return processes, len(used)

    def _where(self, pid: int, pods: dict[int, PodRef]) -> PodRef:
        if self.attributor is None:
            return UNATTRIBUTED
        ref = pods.get(pid)
        if ref is None:
            ref = pods[pid] = self.attributor.attribute(pid)
        return ref

    def _read_migs(
        self, index: int, parent_uuid: str, handle: Any, bus: str, pods: dict[int, PodRef]
    ) -> list[DeviceReading]:
        count = self._call(
            parent_uuid, "nvmlDeviceGetMaxMigDeviceCount", "", self._fn("nvmlDeviceGetMaxMigDeviceCount"), handle
        )
        if count is _MISSING:
            return []
        readings: list[DeviceReading] = []
        by_index = self._fn("nvmlDeviceGetMigDeviceHandleByIndex")
        for slot in range(int(count)):
            try:
                mig = by_index(handle, slot)
            except Exception as exc:
                if code_of(exc) == NOT_FOUND:
                    continue  # an empty slot: no MIG device there, not a failure
                self.count_error("nvmlDeviceGetMigDeviceHandleByIndex", exc)
                if code_of(exc) == GPU_IS_LOST:
                    raise DeviceLost(parent_uuid) from exc
                continue
            gpu = f"{index}/{slot}"
            uuid = self._call(parent_uuid, "nvmlDeviceGetUUID", "mig", self._fn("nvmlDeviceGetUUID"), mig)
            if uuid is _MISSING:
                continue
            uuid = _text(uuid)
            name, _ = self._identity(uuid, mig, with_pci=False)
            self.labels_by_uuid[uuid] = (gpu, name)
            instance = self._mig_instance(uuid, mig)
            values = self._read_values(uuid, mig, full_gpu=False)
            processes, process_count = self._read_processes(uuid, mig, pods)
            readings.append(
                DeviceReading(gpu, uuid, name, bus, str(index), instance, True, values, None, {}, processes, process_count)
            )
        return readings

    def _mig_instance(self, uuid: str, mig: Any) -> str:
        cached = self._mig_ids.get(uuid)
        if cached is not None:
            return cached
        gi = self._call(uuid, "nvmlDeviceGetGpuInstanceId", "", self._fn("nvmlDeviceGetGpuInstanceId"), mig)
        ci = self._call(uuid, "nvmlDeviceGetComputeInstanceId", "", self._fn("nvmlDeviceGetComputeInstanceId"), mig)
        if gi is _MISSING or ci is _MISSING:
            return ""
        self._mig_ids[uuid] = f"{int(gi)}/{int(ci)}"
        return self._mig_ids[uuid]


def _text(value: Any) -> str:
    """NVML strings arrive as ``str`` (pynvml decodes) or ``bytes`` (struct fields such as busId)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
