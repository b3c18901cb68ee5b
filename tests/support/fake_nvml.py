"""A stand-in for ``pynvml`` whose values come from a profile recorded on a real GPU.

Tests cannot have a GPU, so they hand :class:`FakeNvml` to the collector in
place of the pynvml module. It has the pynvml functions the collector calls,
with pynvml's signatures, return shapes (objects with the same attribute
names, ``busId`` as bytes) and failure mode (``NVMLError`` carrying the NVML
return code in ``value``). Its values come from a profile: a JSON file that
``scripts/gpu_check.py --record-profile`` writes from a real GPU with
:func:`record_profile` (``nvml_profiles/`` beside this file; until a device
run replaces it, the H100 profile there is hand-written from NVIDIA's
documented values and says so in its header).

On top of the profile, tests script what a profile cannot show: a call that
fails on one GPU (:meth:`FakeNvml.fail`), a GPU that falls off the bus
(:meth:`FakeNvml.lose`), MIG devices (:meth:`FakeNvml.enable_mig`), XID
events (:meth:`FakeNvml.inject_xid`), no NVML at all (``available=False``).
:attr:`FakeNvml.calls` counts every call by function name.

It lives under ``tests/``, not in the installed package: nothing under
``qwen_fluent/`` exists only for tests. The collector takes any object with
pynvml's functions (its ``nvml`` argument), so the package needs no fake mode;
``scripts/gpu_check.py`` loads this module from here to record a profile.
"""

from __future__ import annotations

import copy
import json
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from qwen_fluent.gpu.errors import reason_of

PROFILES_DIR = Path(__file__).with_name("nvml_profiles")
DEFAULT_PROFILE = PROFILES_DIR / "h100_80gb_hbm3.json"
SCHEMA = 1


class NVMLError(Exception):
    """pynvml's exception shape: ``value`` is the NVML return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _REASON_TEXT.get(self.value, f"NVML Error with code {self.value}")


#: Highest NVML return code (nvml.h: NVML_ERROR_UNKNOWN = 999); every code up to
#: it that the collector names gets that name.
_MAX_CODE = 999

#: Reason label -> NVML code, the inverse of the collector's own table, read
#: through its ``reason_of`` so that a profile's error names and the codes the
#: fake raises for them cannot drift apart.
REASON_TO_CODE: dict[str, int] = {
    reason: code
    for code in range(1, _MAX_CODE + 1)
    if (reason := reason_of(NVMLError(code))) != "other"
}

_REASON_TEXT = {code: reason.replace("_", " ").capitalize() for reason, code in REASON_TO_CODE.items()}


class FakeHandle:
    """A device handle: a GPU index and, for a MIG device, its slot."""

    __slots__ = ("index", "slot")

    def __init__(self, index: int, slot: int | None = None) -> None:
        self.index = index
        self.slot = slot

    def __repr__(self) -> str:
        return f"FakeHandle({self.index}, {self.slot})"


class _EventSet:
    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.registered: dict[int, int] = {}  # index -> event type mask
        self.freed = False


# Calls NVML answers NOT_SUPPORTED for on a MIG device handle (nvml.h marks
# them "not supported on MIG devices"; they are properties of the parent GPU).
_PARENT_ONLY = frozenset(
    {
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetSupportedEventTypes",
    }
)


def load_profile(path: str | Path = DEFAULT_PROFILE) -> dict[str, Any]:
    """Read a profile file; raises ValueError if its schema is not this module's."""
    with open(path, encoding="utf-8") as f:
        profile = json.load(f)
    if profile.get("schema") != SCHEMA:
        raise ValueError(f"{path}: profile schema {profile.get('schema')!r}, expected {SCHEMA}")
    return profile


class FakeNvml:
    """The pynvml functions the collector uses, answering from a profile."""

    NVMLError = NVMLError

    NVML_SUCCESS = 0
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
    NVML_ERROR_UNKNOWN = 999
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1
    nvmlMemory_v2 = 0x02000028
    nvmlEventTypeXidCriticalError = 0x0000000000000008

    def __init__(
        self,
        profile: dict[str, Any] | None = None,
        *,
        gpus: int | None = None,
        available: bool = True,
        init_error: int = 12,
        memory_v2: bool = True,
    ) -> None:
        profile = copy.deepcopy(profile if profile is not None else load_profile())
        devices: list[dict[str, Any]] = profile["devices"]
        if gpus is not None:
            devices = [_clone(devices[i % len(devices)], i) for i in range(gpus)]
        self.profile = profile
        self.devices = devices
        self.available = available
        self.init_error = init_error
        self.memory_v2 = memory_v2
        self.calls: Counter[str] = Counter()
        self._refcount = 0
        self._failures: dict[tuple[int, int | None, str], int] = {}
        self._lost: set[int] = set()
        self._event_sets: list[_EventSet] = []
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_PROFILE, **kwargs: Any) -> FakeNvml:
        return cls(load_profile(path), **kwargs)

    # -- scripting (tests) ----------------------------------------------------------

    def fail(self, gpu: int, call: str, code: int, *, slot: int | None = None) -> None:
        """Make ``call`` raise NVMLError(code) on one GPU (or one of its MIG devices)."""
        self._failures[(gpu, slot, call)] = code

    def heal(self, gpu: int, call: str, *, slot: int | None = None) -> None:
        """Undo :meth:`fail`."""
        self._failures.pop((gpu, slot, call), None)

    def lose(self, gpu: int) -> None:
        """The GPU fell off the bus: every call about it raises GPU_IS_LOST."""
        self._lost.add(gpu)

    def set_processes(self, gpu: int, processes: list[tuple[int, int | None]], *, slot: int | None = None) -> None:
        """Replace the compute processes of a GPU (or MIG device): (pid, used bytes or None)."""
        target = self.devices[gpu] if slot is None else self._mig(gpu, slot)
        target["processes"] = [{"pid": pid, "used_memory": used} for pid, used in processes]

    def enable_mig(self, gpu: int, instances: list[dict[str, Any]]) -> None:
        """Put a GPU in MIG mode with these MIG devices.

        Each instance is ``{"slot", "name", "uuid", "gpu_instance_id",
        "compute_instance_id", "memory": {...}, "processes": [...]}``; missing
        keys get plausible values derived from the parent.
        """
        parent = self.devices[gpu]
        parent["mig_mode"] = [1, 1]
        migs = []
        for n, spec in enumerate(instances):
            mig = {
                "slot": n,
                "name": f"{parent['name']} MIG 1g.10gb",
                "uuid": f"MIG-{gpu:02x}{n:02x}0000-0000-4000-8000-{n:012x}",
                "gpu_instance_id": n + 1,
                "compute_instance_id": 0,
                "memory": {"total": 10_200_547_328, "reserved": 0, "free": 10_200_547_328, "used": 0},
                "processes": [],
            }
            mig.update(spec)
            migs.append(mig)
        parent["mig_devices"] = migs

    def inject_xid(self, gpu: int, xid: int) -> None:
        """Deliver an XID event for ``gpu`` to every event set registered for it."""
        for es in list(self._event_sets):
            if not es.freed and es.registered.get(gpu, 0) & self.nvmlEventTypeXidCriticalError:
                es.queue.put(
                    SimpleNamespace(
                        device=FakeHandle(gpu),
                        eventType=self.nvmlEventTypeXidCriticalError,
                        eventData=xid,
                        gpuInstanceId=0xFFFFFFFF,
                        computeInstanceId=0xFFFFFFFF,
                    )
                )

    # -- plumbing -----------------------------------------------------------------------

    def _enter(self, call: str, handle: FakeHandle | None = None, variant: str = "") -> dict[str, Any] | None:
        """Count the call, raise what it should raise, return the device's profile entry."""
        with self._lock:
            self.calls[call] += 1
        if self._refcount <= 0:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)
        if handle is None:
            return None
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.devices):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        if handle.index in self._lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        code = self._failures.get((handle.index, handle.slot, call))
        if code is not None:
            raise NVMLError(code)
        if handle.slot is not None:
            if call in _PARENT_ONLY:
                raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
            entry = self._mig(handle.index, handle.slot)
        else:
            entry = self.devices[handle.index]
        recorded = entry.get("errors", {})
        reason = recorded.get(f"{call}:{variant}") if variant else None
        reason = reason or recorded.get(call)
        if reason:
            raise NVMLError(REASON_TO_CODE.get(reason, self.NVML_ERROR_UNKNOWN))
        return entry

    def _mig(self, gpu: int, slot: int) -> dict[str, Any]:
        for mig in self.devices[gpu].get("mig_devices") or []:
            if mig["slot"] == slot:
                return mig
        raise NVMLError(self.NVML_ERROR_NOT_FOUND)

    @staticmethod
    def _value(entry: dict[str, Any], key: str) -> Any:
        value = entry.get(key)
        if value is None:  # not recorded: the card did not answer
            raise NVMLError(FakeNvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    # -- pynvml API ---------------------------------------------------------------------

    def nvmlInit(self) -> None:
        with self._lock:
            self.calls["nvmlInit"] += 1
        if not self.available:
            raise NVMLError(self.init_error)
        self._refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self._refcount -= 1

    def nvmlErrorString(self, result: int) -> str:
        return str(NVMLError(result))

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return str(self.profile.get("driver_version", ""))

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return str(self.profile.get("nvml_version", ""))

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        handle = FakeHandle(index)
        self._enter("nvmlDeviceGetHandleByIndex", handle)
        return handle

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return str(self._value(self._enter("nvmlDeviceGetName", handle), "name"))

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return str(self._value(self._enter("nvmlDeviceGetUUID", handle), "uuid"))

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetIndex", handle)
        return handle.index

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> SimpleNamespace:
        entry = self._enter("nvmlDeviceGetPciInfo", handle)
        bus = str(self._value(entry, "pci_bus_id"))
        domain, b, rest = bus.split(":")
        return SimpleNamespace(
            busId=bus.encode(),
            busIdLegacy=bus[4:].encode(),
            domain=int(domain, 16),
            bus=int(b, 16),
            device=int(rest.split(".")[0], 16),
            pciDeviceId=int(entry.get("pci_device_id", 0)),
            pciSubSystemId=0,
        )

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> SimpleNamespace:
        entry = self._enter("nvmlDeviceGetMemoryInfo", handle)
        mem = self._value(entry, "memory")
        if not version:
            # v1: "used" is everything not free, the driver's reservation included
            return SimpleNamespace(total=mem["total"], free=mem["free"], used=mem["total"] - mem["free"])
        if not self.memory_v2:
            raise NVMLError(self.NVML_ERROR_FUNCTION_NOT_FOUND)
        return SimpleNamespace(
            version=version, total=mem["total"], reserved=mem["reserved"], free=mem["free"], used=mem["used"]
        )

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> SimpleNamespace:
        util = self._value(self._enter("nvmlDeviceGetUtilizationRates", handle), "utilization")
        return SimpleNamespace(gpu=util["gpu"], memory=util["memory"])

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        entry = self._enter("nvmlDeviceGetTemperature", handle)
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value(entry, "temperature_gpu_c"))

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return int(self._value(self._enter("nvmlDeviceGetPowerUsage", handle), "power_usage_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return int(self._value(self._enter("nvmlDeviceGetEnforcedPowerLimit", handle), "enforced_power_limit_mw"))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        return int(self._value(self._enter("nvmlDeviceGetTotalEnergyConsumption", handle), "total_energy_mj"))

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        names = {self.NVML_CLOCK_GRAPHICS: "graphics", self.NVML_CLOCK_SM: "sm", self.NVML_CLOCK_MEM: "mem"}
        variant = names.get(clock_type, "")
        entry = self._enter("nvmlDeviceGetClockInfo", handle, variant)
        clocks = self._value(entry, "clocks_mhz")
        if clocks.get(variant) is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return int(clocks[variant])

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return int(self._value(self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle), "clocks_event_reasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return int(
            self._value(self._enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle), "clocks_event_reasons")
        )

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, error_type: int, counter_type: int) -> int:
        kinds = {self.NVML_MEMORY_ERROR_TYPE_CORRECTED: "corrected", self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: "uncorrected"}
        variant = kinds.get(error_type, "")
        entry = self._enter("nvmlDeviceGetTotalEccErrors", handle, variant)
        ecc = self._value(entry, "ecc")
        if counter_type != self.NVML_VOLATILE_ECC or ecc.get(variant) is None:
            # the profile holds the volatile counters only
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return int(ecc[variant])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[SimpleNamespace]:
        entry = self._enter("nvmlDeviceGetComputeRunningProcesses", handle)
        assert entry is not None
        if handle.slot is None and (entry.get("mig_mode") or [0])[0] == 1:
            # the parent of MIG devices answers for all of them
            procs = [
                (p, m["gpu_instance_id"], m["compute_instance_id"])
                for m in entry.get("mig_devices") or []
                for p in m.get("processes") or []
            ]
        else:
            gi = entry.get("gpu_instance_id", 0xFFFFFFFF)
            ci = entry.get("compute_instance_id", 0xFFFFFFFF)
            procs = [(p, gi, ci) for p in entry.get("processes") or []]
        return [
            SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used_memory"], gpuInstanceId=gi, computeInstanceId=ci)
            for p, gi, ci in procs
        ]

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        return list(self._value(self._enter("nvmlDeviceGetMigMode", handle), "mig_mode"))

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        return int(self._value(self._enter("nvmlDeviceGetMaxMigDeviceCount", handle), "max_mig_device_count"))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:
        entry = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        assert entry is not None
        if (entry.get("mig_mode") or [0])[0] != 1:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        self._mig(handle.index, index)  # NOT_FOUND for an empty slot
        return FakeHandle(handle.index, index)

    def nvmlDeviceIsMigDeviceHandle(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceIsMigDeviceHandle", handle)
        return int(handle.slot is not None)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: FakeHandle) -> FakeHandle:
        self._enter("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        if handle.slot is None:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(handle.index)

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeHandle) -> int:
        entry = self._enter("nvmlDeviceGetGpuInstanceId", handle)
        if handle.slot is None:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value(entry, "gpu_instance_id"))

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeHandle) -> int:
        entry = self._enter("nvmlDeviceGetComputeInstanceId", handle)
        if handle.slot is None:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value(entry, "compute_instance_id"))

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeHandle) -> int:
        return int(self._value(self._enter("nvmlDeviceGetSupportedEventTypes", handle), "supported_event_types"))

    def nvmlEventSetCreate(self) -> _EventSet:
        self._enter("nvmlEventSetCreate")
        es = _EventSet()
        self._event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, event_types: int, event_set: _EventSet) -> None:
        entry = self._enter("nvmlDeviceRegisterEvents", handle)
        assert entry is not None
        if event_types & ~int(entry.get("supported_event_types") or 0):
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        event_set.registered[handle.index] = event_set.registered.get(handle.index, 0) | event_types

    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
        self._enter("nvmlEventSetWait")
        try:
            # At most 50 ms: a waiter must loop on TIMEOUT anyway, and a short
            # wait lets tests stop the watcher without waiting out its poll.
            return event_set.queue.get(timeout=min(timeout_ms / 1000.0, 0.05))
        except queue.Empty:
            raise NVMLError(self.NVML_ERROR_TIMEOUT) from None

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        self._enter("nvmlEventSetFree")
        event_set.freed = True
        if event_set in self._event_sets:
            self._event_sets.remove(event_set)


def _clone(device: dict[str, Any], index: int) -> dict[str, Any]:
    """Device ``index`` of a multi-GPU fake: the profile's device with its own uuid, bus id and pids."""
    clone = copy.deepcopy(device)
    clone["index"] = index
    if index == 0:
        return clone
    uuid = str(device["uuid"])
    clone["uuid"] = f"{uuid[:-4]}{index:04x}"
    domain, bus, rest = str(device["pci_bus_id"]).split(":")
    clone["pci_bus_id"] = f"{domain}:{(int(bus, 16) + index * 0x10) % 0x100:02X}:{rest}"
    for n, proc in enumerate(clone.get("processes") or []):
        proc["pid"] = int(proc["pid"]) + 1000 * index + n
    return clone


# -- recording a profile from a real GPU -------------------------------------------------------------


def record_profile(nvml: Any, *, source: str = "recorded", comment: str = "") -> dict[str, Any]:
    """Read every value the fake serves from ``nvml`` (initialised) into a profile dict.

    A call that fails is recorded under the device's ``errors`` by its reason
    (``not_supported`` ...), so the fake fails the same way. Used by
    ``scripts/gpu_check.py --record-profile``; works on the fake too.
    """
    errors_top: dict[str, str] = {}

    def attempt(errors: dict[str, str], key: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            errors[key] = reason_of(exc)
            return None

    def text(value: Any) -> Any:
        return value.decode() if isinstance(value, bytes) else value

    def memory(errors: dict[str, str], handle: Any) -> dict[str, int] | None:
        mem = attempt(errors, "nvmlDeviceGetMemoryInfo", nvml.nvmlDeviceGetMemoryInfo, handle, nvml.nvmlMemory_v2)
        if mem is not None:
            errors.pop("nvmlDeviceGetMemoryInfo", None)
            return {"total": mem.total, "reserved": mem.reserved, "free": mem.free, "used": mem.used}
        mem = attempt(errors, "nvmlDeviceGetMemoryInfo", nvml.nvmlDeviceGetMemoryInfo, handle)
        if mem is None:
            return None
        errors.pop("nvmlDeviceGetMemoryInfo", None)
        # a driver without v2: record v1's used as used, no reservation
        return {"total": mem.total, "reserved": 0, "free": mem.free, "used": mem.used}

    def processes(errors: dict[str, str], handle: Any) -> list[dict[str, Any]]:
        procs = attempt(errors, "nvmlDeviceGetComputeRunningProcesses", nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        return [{"pid": int(p.pid), "used_memory": p.usedGpuMemory} for p in procs or []]

    devices = []
    count = attempt(errors_top, "nvmlDeviceGetCount", nvml.nvmlDeviceGetCount) or 0
    for index in range(count):
        errors: dict[str, str] = {}
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        pci = attempt(errors, "nvmlDeviceGetPciInfo", nvml.nvmlDeviceGetPciInfo, handle)
        util = attempt(errors, "nvmlDeviceGetUtilizationRates", nvml.nvmlDeviceGetUtilizationRates, handle)
        sm = attempt(errors, "nvmlDeviceGetClockInfo:sm", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        mem_clock = attempt(errors, "nvmlDeviceGetClockInfo:mem", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM)
        reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons"
        )
        ecc = {
            kind: attempt(
                errors, f"nvmlDeviceGetTotalEccErrors:{kind}", nvml.nvmlDeviceGetTotalEccErrors, handle, code, nvml.NVML_VOLATILE_ECC
            )
            for kind, code in (
                ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
            )
        }
        device: dict[str, Any] = {
            "index": index,
            "name": text(attempt(errors, "nvmlDeviceGetName", nvml.nvmlDeviceGetName, handle)),
            "uuid": text(attempt(errors, "nvmlDeviceGetUUID", nvml.nvmlDeviceGetUUID, handle)),
            "pci_bus_id": text(pci.busId) if pci is not None else None,
            "pci_device_id": int(pci.pciDeviceId) if pci is not None else None,
            "memory": memory(errors, handle),
            "utilization": {"gpu": util.gpu, "memory": util.memory} if util is not None else None,
            "temperature_gpu_c": attempt(
                errors, "nvmlDeviceGetTemperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
            ),
            "power_usage_mw": attempt(errors, "nvmlDeviceGetPowerUsage", nvml.nvmlDeviceGetPowerUsage, handle),
            "enforced_power_limit_mw": attempt(
                errors, "nvmlDeviceGetEnforcedPowerLimit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle
            ),
            "total_energy_mj": attempt(
                errors, "nvmlDeviceGetTotalEnergyConsumption", nvml.nvmlDeviceGetTotalEnergyConsumption, handle
            ),
            "clocks_mhz": {"sm": sm, "mem": mem_clock},
            "clocks_event_reasons": attempt(errors, "nvmlDeviceGetCurrentClocksEventReasons", reasons_fn, handle),
            "ecc": ecc if any(v is not None for v in ecc.values()) else None,
            "mig_mode": attempt(errors, "nvmlDeviceGetMigMode", nvml.nvmlDeviceGetMigMode, handle),
            "max_mig_device_count": attempt(
                errors, "nvmlDeviceGetMaxMigDeviceCount", nvml.nvmlDeviceGetMaxMigDeviceCount, handle
            ),
            "supported_event_types": attempt(
                errors, "nvmlDeviceGetSupportedEventTypes", nvml.nvmlDeviceGetSupportedEventTypes, handle
            ),
            "processes": processes(errors, handle),
            "errors": errors,
            "mig_devices": [],
        }
        if device["mig_mode"] is not None:
            device["mig_mode"] = [int(v) for v in device["mig_mode"]]
        if device["mig_mode"] and device["mig_mode"][0] == 1:
            for slot in range(device["max_mig_device_count"] or 0):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                except Exception:
                    continue
                mig_errors: dict[str, str] = {}
                device["mig_devices"].append(
                    {
                        "slot": slot,
                        "name": text(attempt(mig_errors, "nvmlDeviceGetName", nvml.nvmlDeviceGetName, mig)),
                        "uuid": text(attempt(mig_errors, "nvmlDeviceGetUUID", nvml.nvmlDeviceGetUUID, mig)),
                        "gpu_instance_id": attempt(mig_errors, "nvmlDeviceGetGpuInstanceId", nvml.nvmlDeviceGetGpuInstanceId, mig),
                        "compute_instance_id": attempt(
                            mig_errors, "nvmlDeviceGetComputeInstanceId", nvml.nvmlDeviceGetComputeInstanceId, mig
                        ),
                        "memory": memory(mig_errors, mig),
                        "processes": processes(mig_errors, mig),
                        "errors": mig_errors,
                    }
                )
        devices.append(device)

    def system(fn_name: str) -> Any:
        fn = getattr(nvml, fn_name, None)
        return text(attempt(errors_top, fn_name, fn)) if fn is not None else None

    return {
        "schema": SCHEMA,
        "_comment": comment,
        "source": source,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "driver_version": system("nvmlSystemGetDriverVersion"),
        "nvml_version": system("nvmlSystemGetNVMLVersion"),
        "cuda_driver_version": system("nvmlSystemGetCudaDriverVersion"),
        "errors": errors_top,
        "devices": devices,
    }
