"""Errors of the GPU collector, and the fixed vocabulary NVML failures are counted in.

NVML reports failures as integer return codes, which ``pynvml`` raises as
``NVMLError`` with a ``value``. :func:`reason_of` folds any exception raised by
an NVML call into one of :data:`REASONS`, so that
``qwen_gpu_nvml_errors_total{call,reason}`` has a bounded label set: ``call``
is one of the function names in :data:`CALLS` and ``reason`` one of
:data:`REASONS`.
"""

from __future__ import annotations


class GpuError(Exception):
    """Base class of the errors raised by :mod:`qwen_fluent.gpu`."""


class NvmlUnavailable(GpuError):
    """NVML could not be loaded or initialised (no driver, no GPU, no library).

    ``reason`` is one of :data:`REASONS` (``library_not_found``,
    ``driver_not_loaded``, ``import_error``, ...); the message is the line
    logged once at start.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"NVML unavailable ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class DeviceLost(GpuError):
    """A GPU stopped answering (``NVML_ERROR_GPU_IS_LOST``: it fell off the bus).

    Raised inside one device's read only: the other GPUs are still read, and
    the lost one is reported with ``qwen_gpu_up 0``.
    """


# NVML return codes (nvml.h, stable ABI) and the label value each becomes.
# Written out rather than derived from pynvml's class names so that the label
# values do not change when pynvml renames a class.
_CODE_TO_REASON: dict[int, str] = {
    1: "uninitialized",
    2: "invalid_argument",
    3: "not_supported",
    4: "no_permission",
    5: "already_initialized",
    6: "not_found",
    7: "insufficient_size",
    8: "insufficient_power",
    9: "driver_not_loaded",
    10: "timeout",
    11: "irq_issue",
    12: "library_not_found",
    13: "function_not_found",
    14: "corrupted_inforom",
    15: "gpu_is_lost",
    16: "reset_required",
    17: "operating_system",
    18: "lib_rm_version_mismatch",
    19: "in_use",
    20: "memory",
    21: "no_data",
    22: "vgpu_ecc_not_supported",
    23: "insufficient_resources",
    24: "freq_not_supported",
    25: "argument_version_mismatch",
    26: "deprecated",
    27: "not_ready",
    28: "gpu_not_found",
    29: "invalid_state",
    30: "reset_type_not_supported",
    999: "unknown",
}

#: Every value the ``reason`` label can take.
REASONS: tuple[str, ...] = (
    *_CODE_TO_REASON.values(),
    "other",  # an NVML code newer than this table
    "exception",  # not an NVMLError at all (ctypes error, bad value, ...)
    "import_error",  # pynvml itself could not be imported
)

NOT_SUPPORTED = 3
NOT_FOUND = 6
TIMEOUT = 10
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
ARGUMENT_VERSION_MISMATCH = 25

#: Every NVML function the collector calls: the values of the ``call`` label.
CALLS: tuple[str, ...] = (
    "nvmlInit",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetPciInfo",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlEventSetCreate",
    "nvmlDeviceGetSupportedEventTypes",
    "nvmlDeviceRegisterEvents",
    "nvmlEventSetWait",
)


def code_of(exc: BaseException) -> int | None:
    """The NVML return code carried by ``exc``, or ``None`` if it is not an NVML error."""
    # pynvml's per-code subclasses and the fake's class all derive from a
    # class named NVMLError; matching the name keeps this module free of a
    # pynvml import (it must load where pynvml is missing).
    if not any(cls.__name__ == "NVMLError" for cls in type(exc).__mro__):
        return None
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def reason_of(exc: BaseException) -> str:
    """Fold an exception raised by an NVML call into one of :data:`REASONS`."""
    if isinstance(exc, ImportError):
        return "import_error"
    if isinstance(exc, AttributeError):
        # the installed pynvml predates this function
        return "function_not_found"
    code = code_of(exc)
    if code is None:
        return "exception"
    return _CODE_TO_REASON.get(code, "other")
