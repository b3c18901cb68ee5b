"""``qwen-fluent gpu``: one screen of what NVML reads now, for a quick check on a node.

It reads through the same :class:`~qwen_fluent.gpu.reader.NvmlReader` as the
collector, so what it prints is what ``/metrics`` would expose.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from qwen_fluent.gpu.attribution import ProcessAttributor
from qwen_fluent.gpu.errors import reason_of
from qwen_fluent.gpu.reader import CLOCK_EVENT_REASONS, DeviceReading, NvmlReader

GIB = 1024**3

#: Rows of processes printed before "... and N more": one screen is ~50 lines.
MAX_PROCESS_ROWS = 30


def _num(values: dict[str, float], key: str, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    value = values.get(key)
    return "-" if value is None else fmt.format(value / scale)


def _row(dev: DeviceReading) -> str:
    v = dev.values
    name = dev.name if len(dev.name) <= 26 else dev.name[:25] + "~"
    if not dev.up:
        return f"{dev.gpu:<5} {name:<26} LOST (no answer from NVML)"
    memory = f"{_num(v, 'memory_used_bytes', GIB, '{:.1f}')}/{_num(v, 'memory_total_bytes', GIB, '{:.1f}')}"
    util = _num(v, "utilization_ratio", 0.01)
    mem_util = _num(v, "memory_utilization_ratio", 0.01)
    power = f"{_num(v, 'power_watts')}/{_num(v, 'power_limit_watts')}"
    ecc = f"{dev.ecc['corrected']:.0f}/{dev.ecc['uncorrected']:.0f}" if len(dev.ecc) == 2 else "-"
    if dev.clock_event_reasons is None:
        events = "-"
    else:
        events = ",".join(r for bit, r in CLOCK_EVENT_REASONS if dev.clock_event_reasons & bit) or "none"
    return (
        f"{dev.gpu:<5} {name:<26} {memory:>11} {util:>4} {mem_util:>4} {_num(v, 'temperature_celsius'):>4} "
        f"{power:>8} {_num(v, 'sm_clock_hertz', 1e6):>5} {_num(v, 'memory_clock_hertz', 1e6):>5} {ecc:>5} {events}"
    )


def print_table(
    nvml: Any = None,
    out: TextIO = sys.stdout,
    *,
    proc_root: str = "/proc",
    log_root: str = "/var/log",
) -> int:
    """Print every GPU, its processes and any NVML failure. 0 if NVML read fine, 1 if unavailable."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
    except Exception as exc:
        print(
            f"NVML unavailable ({reason_of(exc)}: {exc or type(exc).__name__}): "
            "no NVIDIA driver or GPU visible here, or pynvml missing; no GPU metrics would be exposed.",
            file=out,
        )
        return 1
    try:
        reader = NvmlReader(nvml, ProcessAttributor(proc_root, log_root))
        snapshot = reader.read()
        full = [d for d in snapshot.devices if not d.parent_gpu]
        print(
            f"driver {snapshot.driver_version or '?'}, {len(full)} GPU(s)"
            + (f", {len(snapshot.devices) - len(full)} MIG device(s)" if len(full) != len(snapshot.devices) else ""),
            file=out,
        )
        print(
            f"{'GPU':<5} {'NAME':<26} {'MEM GiB':>11} {'UTIL':>4} {'MEM%':>4} {'TEMP':>4} "
            f"{'POWER W':>8} {'SM':>5} {'MEM':>5} {'ECC':>5} CLOCK EVENTS",
            file=out,
        )
        for dev in snapshot.devices:
            print(_row(dev), file=out)
        rows = [(dev, proc) for dev in snapshot.devices for proc in dev.processes]
        if rows:
            print(f"\n{'GPU':<5} {'PID':>8} {'MEM GiB':>8}  NAMESPACE/POD/CONTAINER", file=out)
            for dev, proc in rows[:MAX_PROCESS_ROWS]:
                where = "/".join(p for p in proc.where if p) or "- (not attributed)"
                print(f"{dev.gpu:<5} {proc.pid:>8} {proc.used_bytes / GIB:>8.2f}  {where}", file=out)
            if len(rows) > MAX_PROCESS_ROWS:
                print(f"... and {len(rows) - MAX_PROCESS_ROWS} more", file=out)
        else:
            print("\nno compute processes", file=out)
        errors = reader.errors_copy()
        if errors:
            listed = ", ".join(f"{call} {reason} x{n}" for (call, reason), n in sorted(errors.items()))
            print(f"\nNVML failures: {listed}", file=out)
        return 0
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # nothing to do about it in a one-shot command
            pass
